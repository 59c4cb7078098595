"""The kernels' inline PTX, run on the CPU by tests/ptx_emulator.py against what each asm string is for: Triton's
interpreter runs no inline PTX, so without a GPU these strings were checked by nothing (their kernels' own tests need
one). Bit for bit where the kernel claims exactness, else within bf16's rounding of the exact result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.ptx_emulator import bf16_bits, halves, run

pytest.importorskip("triton")


def _asm(constexpr) -> str:
    return getattr(constexpr, "value", constexpr)


def _bf16_words(x: torch.Tensor) -> np.ndarray:
    """bf16 values as uint16 patterns (numpy)."""
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_e4m3_to_bf16_gives_torchs_conversion_of_every_finite_byte():
    from llmserve.kernels.convert import _E4M3_BF16_ASM

    codes = np.array([0 if b & 0x7F == 0x7F else b for b in range(256)], dtype=np.uint8)  # 0x7F, 0xFF: NaNs
    words = codes.reshape(-1, 4).view("<u4").ravel()  # pack=4: byte i of a word is element i
    lo, hi = run(_asm(_E4M3_BF16_ASM), 2, words)
    got = np.stack([lo & 0xFFFF, lo >> 16, hi & 0xFFFF, hi >> 16], -1).ravel().astype(np.uint16)
    want = _bf16_words(torch.from_numpy(codes).view(torch.float8_e4m3fn).float())
    assert np.array_equal(got, want)


def _group_row(group: int, rows: int, seed: int):
    """Random codes of `rows` rows of one group, packed as int4.py packs them, and x (bf16) of the group."""
    from llmserve.model.int4 import pack

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (rows, group), generator=g, dtype=torch.uint8)
    x = (torch.randn(group, generator=g) * torch.rand(group, generator=g) * 4).to(torch.bfloat16)
    return q, pack(q, group).numpy(), x


def _word_dots(dot: str, pairs: str, words: np.ndarray, x: torch.Tensor, group: int, swap: bool = False):
    """int4_pairs' inner loop over one group: per word position m, x's pairs at 4m and 4m + group / 2 (x's int64
    words m and m + group / 8 through the pairs asm), the word dot, summed in float64 (the kernel sums in float32)."""
    from llmserve.kernels import int4_pairs

    xq = x.view(torch.int64).numpy().view(np.uint64)
    total = np.zeros(words.shape[0])
    for m in range(group // 8):
        pa0, pa1 = run(_asm(getattr(int4_pairs, pairs)), 2, xq[m])
        pb0, pb1 = run(_asm(getattr(int4_pairs, pairs)), 2, xq[m + group // 8])
        if swap:
            pa1, pb0 = pb0, pa1
        args = (words[:, m], pa0, pb0, pa1, pb1, int4_pairs.NIBBLES, int4_pairs.MAGIC, int4_pairs.BIAS)
        total += run(_asm(getattr(int4_pairs, dot)), 1, *args)[0].view(np.float32)
    return total


@pytest.mark.parametrize("dot,pairs", [("_SPREAD_DOT", "_SPLIT_PAIRS"), ("_NATURAL_DOT", "_NATURAL_PAIRS")])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_the_paired_gemvs_word_dot_sums_code_minus_8_times_x(group, dot, pairs):
    """The word dot with the pairs its kernel makes of x, over int4.py's packing: within bf16's rounding of the
    exact sum of (code - 8) * x; the same loop with two pairs swapped (a wrong nibble order) is far off."""
    q, packed, x = _group_row(group, 64, seed=group)
    words = packed.view("<u4")
    exact = ((q.double() - 8) * x.double()).sum(1).numpy()
    scale = ((q.double() - 8).abs() * x.double().abs()).sum(1).numpy()
    err = np.abs(_word_dots(dot, pairs, words, x, group) - exact) / scale
    assert err.max() < 2.0 ** -6, err.max()
    wrong = np.abs(_word_dots(dot, pairs, words, x, group, swap=True) - exact) / scale
    assert np.median(wrong) > 0.05


def test_pack_rounds_to_bf16_and_pair_sum_adds_in_float32():
    from llmserve.kernels.int4_pairs import _PACK, _PAIR_SUM

    g = torch.Generator().manual_seed(0)
    lo, hi = (torch.randn(4096, generator=g) * 100).float(), (torch.randn(4096, generator=g) * 1e-3).float()
    (p,) = run(_asm(_PACK), 1, lo.numpy().view(np.uint32), hi.numpy().view(np.uint32))
    assert np.array_equal((p & 0xFFFF).astype(np.uint16), _bf16_words(lo))
    assert np.array_equal((p >> 16).astype(np.uint16), _bf16_words(hi))
    (s,) = run(_asm(_PAIR_SUM), 1, p)
    want = lo.to(torch.bfloat16).float() + hi.to(torch.bfloat16).float()
    assert np.array_equal(s.view(np.float32), want.numpy())


def _wgmma_operands(seed: int, n: int = 2048):
    """Two rows' 16-bit words (one packed register, pack=2), their float16 scales and minimums as dequant() pairs
    them: s_hi = bf16(s), s_lo = bf16(s - s_hi), m in bf16, each (v, v)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 2 ** 32, (n,), generator=g, dtype=torch.int64).numpy().astype(np.uint32)
    s = (torch.rand(n, 2, generator=g) * 0.02 + 1e-4).half().float()
    m = (-(torch.rand(n, 2, generator=g) * 0.1)).half().float()

    def pairs(v: torch.Tensor) -> list[np.ndarray]:
        b = _bf16_words(v).astype(np.uint32)
        return [b[:, i] | (b[:, i] << 16) for i in range(2)]

    s_hi = s.to(torch.bfloat16).float()
    return w, s, m, pairs(s_hi), pairs(s - s_hi), pairs(m)


def _nibbles(w: np.ndarray, row: int, high: bool) -> np.ndarray:
    """The codes of row `row`'s word (16 bits of w), its two bytes' low or high nibbles: [n, 2]."""
    word = (w >> (16 * row)) & 0xFFFF
    return np.stack([(word >> (8 * b + 4 * high)) & 0xF for b in range(2)], -1).astype(np.float64)


@pytest.mark.parametrize("asym", [False, True])
def test_the_wgmma_dequantization_gives_the_twins_bf16_weights(asym):
    """SYM_ASM: bf16(s * (code - 8)) bit for bit, the float32 product the twin rounds (exact for a float16 s);
    ASYM_ASM: s * code + m with m in bf16 and the inner fma rounded, within one bf16 rounding of the twin's."""
    from llmserve.kernels.int4_wgmma import ASYM_ASM, SYM_ASM

    w, s, m, s_hi, s_lo, m2 = _wgmma_operands(seed=int(asym))
    args = [w, *s_hi, *s_lo] + (m2 if asym else [])
    out = run(_asm(ASYM_ASM if asym else SYM_ASM), 4, *args)
    for row in range(2):
        for high in (False, True):
            got = np.stack(halves(out[2 * high + row]), -1)
            c = _nibbles(w, row, high)
            sv, mv = s[:, row].double().numpy()[:, None], m[:, row].double().numpy()[:, None]
            if not asym:
                want = bf16_bits(sv * (c - 8))
                assert np.array_equal(bf16_bits(got), want)
            else:
                exact = sv * c + mv
                assert np.all(np.abs(got - exact) <= 2.0 ** -7 * (np.abs(exact) + np.abs(mv)))


def test_the_mma_words_become_128_plus_their_codes():
    """int4_mma's _WORD_ASM: bytes 0-1's low nibbles, their high ones, bytes 2-3's low, their high, each pair as bf16
    128 + code (the kernel subtracts 8 more later, in its products)."""
    from llmserve.kernels.int4_mma import _WORD_ASM

    w = np.arange(0, 2 ** 32, 2 ** 32 // 4099, dtype=np.uint64).astype(np.uint32)
    out = run(_asm(_WORD_ASM), 4, w)
    for i, (row, high) in enumerate([(0, False), (0, True), (1, False), (1, True)]):
        assert np.array_equal(np.stack(halves(out[i]), -1), 128 + _nibbles(w, row, high))
