"""The one-row int4 GEMVs with K split across programs (llmserve/kernels/group_tiles.py's `slices_summed`: each
slice's float32 partial, the row block's last program sums them and runs the epilogue): the word GEMV under Triton's
interpreter on the CPU, the paired GEMV and its folds on a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_kernels import DEV, assert_rotates_as_rope_and_cache, rel  # noqa: E402
from test_kernels_int4 import _int4_case  # noqa: E402
from test_kernels_int4_mma import BF, _args  # noqa: E402


def test_a_gemv_split_covers_k_in_slices_of_two_tiles_or_more():
    from llmserve.kernels.group_tiles import gemv_split

    assert gemv_split(14336, 1024, 256, 0) == (1, 14336)
    assert gemv_split(14336, 1024, 256, 1024) == (4, 4096)  # 4, 4, 4 and 2 tiles
    assert gemv_split(4096, 512, 384, 768) == (2, 2048)
    assert gemv_split(4096, 512, 896, 768) == (1, 4096)  # gate_up's programs are already many
    for K, bk, grid, programs in ((1408, 256, 3, 100), (5 * 128, 128, 1, 64), (128, 128, 4, 64)):
        split, k_slice = gemv_split(K, bk, grid, programs)
        assert k_slice % bk == 0 and (split - 1) * k_slice < K <= split * k_slice
        assert split == 1 or k_slice >= 2 * bk


@pytest.mark.parametrize("group,symmetric,gated", [(32, True, False), (128, False, True), (64, True, True)])
def test_the_word_gemv_split_sums_every_slice_once_and_leaves_its_counters_zero(group, symmetric, gated):
    """2 and 3 slices (the last short) of 11 groups of 128 inputs, N not a multiple of the 16-row block: the torch
    twin's output, the bias added once, and the counters zero again for the next launch (two in a row)."""
    from llmserve.kernels.int4 import check_codes
    from llmserve.kernels.int4_words import w4gemv_words

    x, t, bias, ref = _int4_case(1, 40, 11 * 128, group, symmetric, gated)
    sizes = check_codes(t["weight"], t["weight_scale"], t.get("weight_min"))
    counters = torch.zeros(3, dtype=torch.int32, device=DEV)
    for programs in (6, 9, 9):
        out = w4gemv_words(x, *_args(t, bias), gated, (16, 256, 4, 1), False, sizes, programs, counters)
        assert out.shape == (1, 40) and rel(out, ref) < 1e-2, programs
        assert not counters.any()


GPU = pytest.mark.skipif(DEV != "cuda", reason="inline PTX: Triton's interpreter cannot run the paired GEMV")


@GPU
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("fold", [None, "gate_out", "rope", "add_norm"])
def test_the_paired_gemv_split_gives_its_folds_the_sum(symmetric, fold, monkeypatch):
    """Split 4 ways (8 tiles of 512 inputs): within rounding of the unsplit GEMV, the same bits every run, counters
    zero after; its folds as test_kernels_int4_mma.py checks them, against the same split's plain product."""
    from llmserve.kernels import group_tiles, int4

    monkeypatch.setattr(group_tiles, "SPLIT_PROGRAMS", 1 << 16)
    nh, nkv, hd = 2, 1, 64
    N = {None: 200, "gate_out": 2 * 96, "rope": (nh + 2 * nkv) * hd, "add_norm": 256}[fold]
    x, t, bias, _ = _int4_case(1, N, 4096, 128, symmetric, False)
    x, args = x.to(BF), _args(t, bias.to(BF))
    c = torch.zeros(N, dtype=torch.int32, device=DEV)
    if fold in (None, "gate_out"):
        gate_out = fold == "gate_out"
        out = int4.w4gemv(x, *args, gate_out=gate_out, counters=c)
        assert rel(out.float(), int4.w4gemv(x, *args, gate_out=gate_out).float()) < 2e-3
        assert torch.equal(out, int4.w4gemv(x, *args, gate_out=gate_out, counters=c))
    elif fold == "rope":
        assert_rotates_as_rope_and_cache(lambda rope: int4.w4gemv(x, *args, rope=rope, counters=c), nh, nkv, hd, 5, BF)
    else:
        res = torch.randn(1, N, device=DEV).to(BF)
        norm_w = (1 + 0.1 * torch.randn(N, device=DEV)).to(BF)
        before = res.clone()
        sums, weighted = int4.w4gemv(x, *args[:3], add_to=res, next_norm=norm_w, counters=c)
        y = int4.w4gemv(x, *args[:3], counters=c)
        assert torch.equal(res, (y.float() + before.float()).to(BF))
        assert torch.equal(weighted, (res.float() * norm_w.float()).to(BF))
        assert torch.allclose(sums.sum(), res.float().pow(2).sum(), rtol=1e-5)
    assert not c.any()


def test_an_int4_linear_keeps_one_zeroed_counter_buffer_for_its_one_row_gemv():
    """Int4Linear's split-K counters: made at the first call on x's device (one int32 an 8-row block), then the same
    buffer every call, so a CUDA graph captured after the first step reads what the eager steps left zero."""
    from llmserve.model.int4 import Int4SymLinear

    layer = Int4SymLinear(256, 200)
    x = torch.zeros(1, 256, device=DEV)
    counters = layer._split_counters(x)
    assert counters.dtype == torch.int32 and counters.numel() == 26 and not counters.any()
    assert counters.device == x.device and layer._split_counters(x) is counters
