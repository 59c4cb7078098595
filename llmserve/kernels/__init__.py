"""Triton kernels for the CUDA fast path of the PyTorch engine.

Each kernel has a plain torch twin (the CPU path, and the reference in tests/test_kernels.py). The model
calls `enabled(t)` to pick: Triton on a CUDA tensor when triton imports and LLMSERVE_TRITON_KERNELS is not
"0", torch otherwise. Kernels can also run on CPU tensors under TRITON_INTERPRET=1 (tests only).
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with CUDA builds of torch; CPU wheels lack it
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    HAS_TRITON = False


def enabled(t: torch.Tensor) -> bool:
    mode = os.environ.get("LLMSERVE_TRITON_KERNELS", "1")
    if mode == "interpret":  # tests: every tensor, through Triton's CPU interpreter
        return HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
    return HAS_TRITON and t.is_cuda and mode != "0"


# Programmatic dependent launch (Hopper and later): the linear and fused kernels are launched with `launch_pdl`
# and start by waiting for the previous grid (`gdc_wait`, before touching any memory), then let the next one
# launch (`gdc_launch_dependents`). The next kernel's launch and CTA placement then overlap this one's run and
# tail instead of following its end: a decode step is ~300 small kernels. Measured on the H100 (graph replay,
# bench/results/2026-11-25-h100-pdl): batch 1 / 8 / 64 / 256 take 5.03 / 5.45 / 6.50 / 10.00 ms against
# 5.19 / 5.53 / 6.66 / 10.12 ms plain; with the attention kernels launched this way too, batch 8 got slower
# (5.68 ms), so they launch plainly. The model runner sets this while it captures the decode graphs of up to
# 16 rows (ServingConfig.pdl; see _capture_graphs for why not larger ones); False keeps plain launches (and
# Triton's CPU interpreter, which has no griddepcontrol).
PDL = False


def pdl() -> dict:
    """Keyword arguments for a kernel launch: the kernel's PDL constexpr and, when on, Triton's launch option."""
    return {"PDL": True, "launch_pdl": True} if PDL else {"PDL": False}
