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
