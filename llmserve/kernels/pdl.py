"""Every PDL kernel's prologue under programmatic dependent launch (llmserve.kernels): `pdl_prologue`.

A kernel launched with PDL may become resident while the previous kernel still runs, so it waits for that grid
(`gdc_wait`) before touching memory, then lets the next kernel launch (`gdc_launch_dependents`). Plain launches
(the CPU interpreter's, eager steps) compile without either.
"""

from __future__ import annotations

import triton.language as tl
from triton import jit
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@jit
def pdl_prologue(PDL: tl.constexpr):
    """Under PDL: wait for the previous grid first, then let the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
