"""The int4 tensor-core GEMV for 1-8 rows (llmserve/kernels/int4_mma.py) against the torch twin, and its one-row folds
against the paired GEMV's. Gluon: on a GPU only (test_ptx_stats.py compiles it for sm_90 on the CPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_kernels import DEV, rel  # noqa: E402
from test_kernels_int4 import _int4_case  # noqa: E402

GPU = pytest.mark.skipif(DEV != "cuda", reason="Gluon and inline PTX: a GPU runs them (compiled on the CPU below)")
BF = torch.bfloat16


def _args(t, bias=None):
    return t["weight"], t["weight_scale"], t.get("weight_min"), bias


@GPU
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [1, 2, 5, 8])
@pytest.mark.parametrize("config", [None, (2, 8, 2, 1, 0), (1, 4, 1, 0, 3)])
def test_int4_mma_matches_the_torch_twin(symmetric, M, config):
    """Odd row counts (N not a multiple of a program's 16 R rows), K of 1 and 5 groups (fewer than a program's warps
    take at a time) and Llama-3-8B's down_proj (112 groups), at launch shapes mma_config does not pick: register
    buffers with L2 prefetch, and the cp.async ring."""
    from llmserve.kernels.int4_mma import w4mma

    for N, K in ((40, 128), (72, 5 * 128), (4096, 14336)):
        x, t, bias, ref = _int4_case(M, N, K, 128, symmetric, False)
        out = w4mma(x.to(BF), *_args(t, bias.to(BF)), (N, K, 128), config=config)
        assert out.shape == (M, N) and rel(out.float(), ref.float()) < 1e-2, (N, K)


@GPU
@pytest.mark.parametrize("M", [1, 3, 8])
def test_int4_linear_takes_the_mma_kernel_up_to_mma_rows(M, monkeypatch):
    """w4mm (and w4gemv at one row, with MMA_ONE_ROW) give int4_mma's output for bf16 x in groups of 128 up to
    MMA_ROWS rows; the MLP's gated x past one row as silu_mul then the kernel."""
    from llmserve.kernels import fused, int4
    from llmserve.kernels.int4_mma import w4mma

    monkeypatch.setattr(int4, "MMA_ROWS", 8)
    monkeypatch.setattr(int4, "MMA_ONE_ROW", True)
    for gated in (False, True) if M > 1 else (False,):  # one gated row: the paired GEMV's gate in its loads
        x, t, bias, _ = _int4_case(M, 96, 256, 128, True, gated)
        x, bias = x.to(BF), bias.to(BF)
        ref = w4mma(fused.silu_mul(x) if gated else x, *_args(t, bias), (96, 256, 128))
        assert torch.equal(int4.w4mm(x, *_args(t, bias), gated=gated), ref), (M, gated)


@GPU
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("fold", ["gate_out", "rope", "add_norm"])
def test_int4_mma_folds_as_the_paired_gemv(symmetric, fold, monkeypatch):
    """The one-row folds (gemv.store_folded, as int4_pairs.py runs it) against the paired GEMV's on the same weights:
    the residual row and the weighted row bit for bit after add_to, the rest within the products' rounding (the mma
    sums exactly scaled codes in float32; the paired GEMV rounds a word's products to bf16)."""
    from test_kernels import assert_rotates_as_rope_and_cache

    from llmserve.kernels import int4
    from llmserve.kernels.gemv import RowNorm

    monkeypatch.setattr(int4, "MMA_ONE_ROW", True)
    nh, nkv, hd = 2, 1, 64
    N = {"gate_out": 2 * 96, "rope": (nh + 2 * nkv) * hd, "add_norm": 256}[fold]
    x, t, bias, _ = _int4_case(1, N, 384, 128, symmetric, False)
    x, args = x.to(BF), _args(t, bias.to(BF))
    if fold == "gate_out":
        out = int4.w4gemv(x, *args, gate_out=True)
        assert rel(out.float(), int4.w4gemv(x, *args, gate_out=True, pairs=True).float()) < 1e-2
    elif fold == "rope":
        assert_rotates_as_rope_and_cache(lambda rope: int4.w4gemv(x, *args, rope=rope), nh, nkv, hd, 5, BF)
    else:
        res = torch.randn(1, N, device=DEV).to(BF)
        norm_w = (1 + 0.1 * torch.randn(N, device=DEV)).to(BF)
        res_pairs = res.clone()
        sums, weighted = int4.w4gemv(x, *args[:3], add_to=res, next_norm=norm_w)
        y = int4.w4gemv(x, *args[:3])
        assert torch.equal(res, (y.float() + res_pairs.float()).to(BF))
        assert torch.equal(weighted, (res.float() * norm_w.float()).to(BF))
        assert torch.allclose(sums.sum(), res.float().pow(2).sum(), rtol=1e-5)
        _, t2, b2, _ = _int4_case(1, 64, N, 128, symmetric, False, seed=1)
        norm = RowNorm(norm_w, sums, 1e-5)
        out = int4.w4gemv(weighted, *_args(t2, b2.to(BF)), norm=norm)
        ref = int4.w4gemv(weighted, *_args(t2, b2.to(BF)), norm=norm, pairs=True)
        assert rel(out.float(), ref.float()) < 1e-2
