"""The kernels' prologue under programmatic dependent launch (`pdl_prologue`), and the weight-streaming kernels'
(GEMV and small-M products: `wait_previous`, which first asks L2 for weights).

With PDL a kernel's programs become resident while the previous kernel still runs (llmserve.kernels) and wait for
it (`gdc_wait`) before touching its output. The weights are no kernel's output, so a program can ask L2 for the
first lines of its weight rows before that wait: HBM then streams the next matrix through the previous kernel's
tail and through small kernels (an RMSNorm, the rotary one) instead of starting after them. Plain launches (the
CPU interpreter's, eager steps) skip it.
"""

from __future__ import annotations

import torch
import triton.language as tl
from triton import jit
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

# What a program asks of L2 before its wait, in bytes (0: nothing). A first wave of a few hundred programs then
# asks for ~10 MB, what HBM moves in the ~3 us of a small kernel between two weight reads.
PREFETCH_BYTES = 32768
# At most what one program of a kernel asks for of the matrix the kernel after it reads (decode attention, o_proj's)
PREFETCH_SHARE_LINES = 1024
LINE = 128  # bytes of an L2 line


@jit
def l2_prefetch(ptrs):
    """Each address's line into L2 (no registers, no wait; `prefetch.global.L2`)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@jit
def wait_previous(w_ptr, offs_n, N, stride_wn, PDL: tl.constexpr, PREFETCH: tl.constexpr, STEP: tl.constexpr):
    """Under PDL: the first PREFETCH lines (STEP elements each) of weight rows `offs_n` asked of L2, then
    `pdl_prologue` (the wait for the previous grid, the signal that the next one may launch)."""
    if PDL and PREFETCH > 0:
        rows = tl.minimum(offs_n, N - 1).to(tl.int64)  # rows past N: the last one again (no stray address)
        l2_prefetch(w_ptr + rows[:, None] * stride_wn + (tl.arange(0, PREFETCH) * STEP)[None, :])
    pdl_prologue(PDL)


@jit
def pdl_prologue(PDL: tl.constexpr):
    """PDL 1: wait for the previous grid, then let the next one launch. 2 (`launch_args` under
    PDL_TRIGGER_FIRST): the other way round, so a one-program kernel (an RMSNorm, the rotary one) lets the weight
    kernel after it place its programs, and prefetch, while it still waits; the next kernel's own wait still
    follows this one's end, and this one's the previous one's."""
    if PDL == 2:
        gdc_launch_dependents()
        gdc_wait()
    elif PDL:
        gdc_wait()
        gdc_launch_dependents()


def prefetch_args(w: torch.Tensor, block_n: int, pdl: bool, row_bytes: int | None = None) -> dict:
    """The PREFETCH and STEP constexprs of `wait_previous` for a program of `block_n` rows of `w` ([N, row]):
    a power of two of lines a row within PREFETCH_BYTES a program and within the `row_bytes` it reads of a row
    (a split-K program's share; default the whole row); none without PDL."""
    row_lines = (w.shape[1] * w.element_size() if row_bytes is None else row_bytes) // LINE
    lines = min(PREFETCH_BYTES // (block_n * LINE), row_lines) if pdl else 0
    return {"PREFETCH": 1 << (lines.bit_length() - 1) if lines > 0 else 0, "STEP": LINE // w.element_size()}



def prefetch_share(w: torch.Tensor | None, programs: int) -> tuple[int, int]:
    """(lines of `w`, lines a program asks for) for a kernel of `programs` programs that prefetches the whole
    contiguous `w` for the kernel after it: an even share, a power of two (the last lines asked for again);
    (0, 0) without `w` (or with a strided one: a hint, not needed for what the kernels compute)."""
    if w is None or not w.is_contiguous():
        return 0, 0
    lines = w.numel() * w.element_size() // LINE
    share = min(PREFETCH_SHARE_LINES, -(-lines // programs))
    return lines, 1 << (share - 1).bit_length() if share > 0 else 0
