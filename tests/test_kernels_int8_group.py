"""The 8-bit group kernels (llmserve/kernels/int8_group.py) against Int8GroupLinear's torch twin: dequantize as
ggml does, then F.linear. On a GPU, or under Triton's interpreter on the CPU where triton is installed."""

import os

import pytest
import torch
from torch.nn import functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from llmserve.kernels.int8_group import w8gmm  # noqa: E402
from llmserve.model.int8_group import dequantize_int8_group  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter has no bf16


def _case(M, N, K, group, symmetric, gated, scale_dtype=torch.float16, seed=0):
    """Codes as the GGUF repacks hold them (Q8_0: -128..127; an asymmetric K-quant: 0..31 with a minimum)."""
    gen = torch.Generator().manual_seed(seed)
    low, high = (-128, 128) if symmetric else (0, 32)
    q = torch.randint(low, high, (N, K), generator=gen, dtype=torch.int8)
    scale = (torch.rand(N, K // group, generator=gen) * 0.02 + 0.001).to(scale_dtype)
    minimum = None if symmetric else (-torch.rand(N, K // group, generator=gen) * 0.1).to(scale_dtype)
    x = torch.randn(M, 2 * K if gated else K, generator=gen).to(DEV, DT)
    bias = torch.randn(N, generator=gen).to(DEV, DT)
    h = F.silu(x[:, :K]) * x[:, K:] if gated else x
    ref = F.linear(h, dequantize_int8_group(q, scale, minimum, DT).to(DEV), bias)
    dev = [t.to(DEV) if t is not None else None for t in (q, scale, minimum)]
    return x, dev, bias, ref


def _check(M, N, K, group, symmetric, gated, config=None, scale_dtype=torch.float16):
    x, (q, scale, minimum), bias, ref = _case(M, N, K, group, symmetric, gated, scale_dtype)
    out = w8gmm(x, q, scale, minimum, bias, gated=gated, config=config)
    assert out.shape == (M, N) and out.dtype == DT
    err = (out.double() - ref.double()).norm() / ref.double().norm()
    assert err < 1e-2, (M, N, K, group, symmetric, gated, float(err))


@pytest.mark.parametrize("group,symmetric", [(16, True), (32, False)])
@pytest.mark.parametrize("M", [1, 3])
def test_w8gmm_small_case(group, symmetric, M):
    """K an odd number of tiles (the last one partial), N not a multiple of a block, the gate fused at one row."""
    _check(M, 40, 7 * 32, group, symmetric, gated=M == 1)


@pytest.mark.parametrize("split", [2, 4])
def test_w8gmm_split_k_sums_the_partials(split):
    _check(3, 40, 7 * 64, 32, False, False, config=(16, 32, 64, 4, 3, split), scale_dtype=torch.float32)


@pytest.mark.skipif(DEV != "cuda", reason="the full matrix needs a GPU (small cases run under the interpreter)")
@pytest.mark.parametrize("group", [16, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [1, 3, 16, 64])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_w8gmm_matches_the_torch_twin(group, symmetric, M, gated, scale_dtype):
    _check(M, 200, 7 * 128, group, symmetric, gated, scale_dtype=scale_dtype)
    if M in (1, 16):
        _check(M, 4096, 14336 if gated else 4096, group, symmetric, gated, scale_dtype=scale_dtype)


@pytest.mark.parametrize("group", [16, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_w8gmm_many_rows_dequantize_to_the_twins_weight_bit_for_bit(group, symmetric, scale_dtype):
    """From DEQUANT_ROWS rows: W dequantized whole (ggml's rounding, product and sum apart), then F.linear."""
    from llmserve.kernels.int4 import DEQUANT_ROWS

    x, (q, scale, minimum), bias, ref = _case(DEQUANT_ROWS, 40, 5 * 128, group, symmetric, False, scale_dtype)
    out = w8gmm(x, q, scale, minimum, bias)
    assert torch.equal(out, F.linear(x, dequantize_int8_group(q, scale, minimum, DT), bias))
