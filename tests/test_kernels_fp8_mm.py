"""The fp8 GEMMs (llmserve/kernels/fp8_mm.py for 33-256 rows, `linear.wmm_fp8` for fewer) against a float64 product
of the same e4m3 values and scales, and which shapes fp8_mm takes from cuBLAS. On a GPU, or under Triton's
interpreter on the CPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from llmserve.kernels.fp8_mm import fp8_mm, use_fp8_mm  # noqa: E402
from llmserve.kernels.linear import wmm_fp8  # noqa: E402
from llmserve.model.linear import Fp8Linear, Linear  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter has no bf16


def _operands(M, N, K, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(N, K, generator=gen) * 0.5).to(torch.float8_e4m3fn)
    ws = torch.rand(N, generator=gen) * 0.01 + 0.001
    xq = (torch.randn(M, K, generator=gen) * 2).to(torch.float8_e4m3fn)
    xs = torch.rand(M, 1, generator=gen) * 0.1 + 0.01
    exact = (xq.double() * xs.double()) @ (w.double() * ws.double()[:, None]).t()
    return [t.to(DEV) for t in (xq, xs, w, ws)], exact


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("M,N,K", [(40, 128, 256), (100, 256, 128), (129, 128, 384)])
def test_fp8_mm_is_the_scaled_product(M, N, K, fast):
    (xq, xs, w, ws), exact = _operands(M, N, K)
    out = fp8_mm(xq, xs, w, ws, DT, fast)
    assert out.shape == (M, N) and out.dtype == DT
    err = ((out.double().cpu() - exact).norm() / exact.norm()).item()
    assert err < 4e-3  # the 16-bit output's rounding, and the accumulation order


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("M,N,K,config", [
    (2, 128, 256, None), (8, 192, 384, None), (16, 160, 256, (16, 64, 128, 4, 2)),  # N past the last tile
    (31, 256, 384, (32, 64, 256, 4, 2)),  # K past the last slice
])
def test_wmm_fp8_is_the_scaled_product(M, N, K, config, fast):
    (xq, xs, w, ws), exact = _operands(M, N, K, seed=M)
    bias = torch.randn(N, device=DEV).to(DT)
    out = wmm_fp8(xq, xs, w, ws, DT, bias=bias, fast=fast, config=config)
    assert out.shape == (M, N) and out.dtype == DT
    exact = exact + bias.double().cpu()
    assert ((out.double().cpu() - exact).norm() / exact.norm()).item() < 4e-3


@pytest.mark.parametrize("M,N,K,fast,expected", [
    (48, 28672, 4096, False, True),  # up to 64 rows every N
    (128, 4096, 14336, False, True),  # down_proj
    (128, 28672, 4096, True, False),  # gate_up past 64 rows: cuBLAS
    (256, 4096, 4096, True, True),  # o_proj at 256 rows with fast accumulation
    (256, 4096, 4096, False, False),  # ... not without it
    (512, 4096, 4096, True, False),
    (48, 576, 576, True, False),  # K no multiple of 128 (SmolLM2): cuBLAS
])
def test_which_shapes_take_the_kernel(M, N, K, fast, expected):
    assert use_fp8_mm(M, N, K, fast) is expected


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("M", [48, 200, 600])
def test_fp8_linear_agrees_with_cublas_on_both_sides_of_the_switch(M, fast):
    torch.manual_seed(0)
    dense = Linear(512, 512)
    dense.weight.data.normal_()
    lin = Fp8Linear.from_linear(dense).to(DEV)
    lin.launch.kernels, lin.launch.fp8_fast_accum = True, fast
    xq = (torch.randn(M, 512, device=DEV) * 2).to(torch.float8_e4m3fn)
    xs = torch.rand(M, 1, device=DEV) * 0.1 + 0.01
    ref = torch._scaled_mm(xq, lin.weight.t(), scale_a=xs, scale_b=lin.weight_scale[None, :],
                           out_dtype=torch.bfloat16)
    out = lin._scaled_mm(xq, xs, DT)
    assert out.dtype == DT
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 4e-3


def test_fp8_linear_takes_e4m3_rows_from_two_when_the_switch_says(monkeypatch):
    """SKINNY_MAX_M["fp8"] = 1: 2-32 rows quantized per token into `wmm_fp8` (the product of the e4m3 rows, not of
    the 16-bit ones, which differs by ~6% on random rows); one row stays the 16-bit GEMV's."""
    from llmserve.kernels import linear as klinear

    monkeypatch.setitem(klinear.SKINNY_MAX_M, "fp8", 1)
    torch.manual_seed(0)
    dense = Linear(512, 256, bias=True)
    dense.weight.data.normal_()
    dense.bias.data.normal_()
    lin = Fp8Linear.from_linear(dense.to(DT)).to(DEV)
    lin.launch.kernels = True
    x = torch.randn(8, 512, device=DEV).to(DT)
    assert lin.takes_fp8_rows(8) and not lin.takes_fp8_rows(1)
    xq, xs = klinear.quant_fp8_per_token(x)
    exact = (xq.double() * xs.double()) @ (lin.weight.double() * lin.weight_scale.double()[:, None]).t()
    exact = exact + lin.bias.double()
    out = lin(x)
    assert out.dtype == DT and ((out.double() - exact).norm() / exact.norm()).item() < 4e-3
