"""The paired int4 GEMV (llmserve/kernels/int4_pairs.py) run whole on the CPU: Triton's interpreter with the kernel's
inline PTX emulated and float32 rounded to bf16 as the GPU rounds it (tests/ptx_emulator.py's `in_interpreter`). The
GPU runs the same tests in test_kernels_int4.py; here they are CI's check of the kernel's loop, its two pairings of x
and its epilogue folds, which the interpreter alone cannot run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel runs (test_kernels_int4.py)")


@pytest.fixture
def emulated(monkeypatch):
    """int4.w4gemv takes the paired GEMV for bf16 rows on the CPU, its asm emulated."""
    from llmserve.kernels import int4
    from tests.ptx_emulator import in_interpreter

    monkeypatch.setattr(int4, "pairs_ok", lambda x: x.dtype == torch.bfloat16)
    with in_interpreter():
        yield


@pytest.mark.parametrize("natural", [True, False])
@pytest.mark.parametrize("group", [32, 128])  # 64: the folds below
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gated", [False, True])
def test_the_paired_gemv_matches_the_torch_twin_with_either_pairing(emulated, monkeypatch, gated, symmetric, group,
                                                                   natural):
    """N not a multiple of the block, a last K tile short; x's natural pairs (K up to NATURAL_MAX_K) and the spread
    ones (beyond), here at one K by moving the bound; gated: silu(gate) * up packed into pairs in x's loads."""
    from test_kernels import rel
    from test_kernels_int4 import _int4_case

    from llmserve.kernels import int4, int4_pairs

    monkeypatch.setattr(int4_pairs, "NATURAL_MAX_K", 8192 if natural else 0)
    x, t, bias, ref = _int4_case(1, 40, 5 * 128, group, symmetric, gated)
    x = x.to(torch.bfloat16)
    out = int4.w4gemv(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias.to(x.dtype), gated=gated)
    assert out.shape == (1, 40) and out.dtype == torch.bfloat16 and rel(out.to(ref.dtype), ref) < 1e-2


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_paired_gemvs_gate_out_is_silu_mul_of_its_output_bit_for_bit(emulated, group, symmetric):
    from test_kernels_int4 import test_int4_gate_out_is_silu_mul_of_the_gemv_bit_for_bit as check

    check(group, symmetric)


@pytest.mark.parametrize("slot", [5, -1])
def test_the_paired_gemv_rotates_and_writes_the_cache_as_rope_and_cache(emulated, slot):
    """Asymmetric weights (the epilogue is the same for both; the folds test below rotates symmetric ones too)."""
    from test_kernels_int4 import test_int4_gemv_rotates_and_writes_the_cache_as_rope_and_cache as check

    check(False, slot)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("after", ["plain", "gate_out", "rope"])
def test_the_paired_gemv_folds_the_residual_add_and_rmsnorm_around_it(emulated, symmetric, after):
    from test_kernels_int4 import check_folds

    check_folds(symmetric, after, torch.bfloat16)
