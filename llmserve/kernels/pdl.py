"""Every PDL kernel's prologue under programmatic dependent launch (llmserve.kernels): `pdl_prologue`.

A kernel launched with PDL may become resident while the previous kernel still runs, so it waits for that grid
(`gdc_wait`) before touching memory, then lets the next kernel launch (`gdc_launch_dependents`), at once or, for a
kernel whose next one should not take SMs while it streams (int4_pairs.py), after its loop. Plain launches (the CPU
interpreter's, eager steps) compile without either.
"""

from __future__ import annotations

import triton.language as tl
from triton import jit
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@jit
def pdl_prologue(PDL: tl.constexpr, LATE: tl.constexpr = False):
    """Under PDL: wait for the previous grid first, then let the next one launch, or, LATE, leave that to the kernel
    (`pdl_launch_next` after its main loop)."""
    if PDL:
        gdc_wait()
        if not LATE:
            gdc_launch_dependents()


@jit
def pdl_launch_next(PDL: tl.constexpr, LATE: tl.constexpr):
    """Under PDL, in a kernel whose prologue was LATE: let the next kernel launch (where the kernel calls this)."""
    if PDL and LATE:
        gdc_launch_dependents()
