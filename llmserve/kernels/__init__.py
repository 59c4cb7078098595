"""Triton kernels for the CUDA fast path of the PyTorch engine.

Each kernel has a plain torch twin (the CPU path, and the reference in tests/test_kernels.py). The choice is
made once, when a model is loaded: `mode_from_env()` reads LLMSERVE_TRITON_KERNELS at start, and
`usable(mode, device, dtype)` says whether a model of that dtype on that device takes the Triton path (a
16-bit model on a CUDA device where triton imports, unless switched off). Kernels can also run on CPU tensors
under TRITON_INTERPRET=1 (tests only, mode "interpret").

Programmatic dependent launch (Hopper and later): the linear and fused kernels' wrappers take `pdl=True` to
launch with `launch_pdl` and wait for the previous grid (`gdc_wait`, in `llmserve.kernels.pdl.pdl_prologue`)
before touching memory, so the next kernel's launch overlaps this one's tail. The caller decides (the model, from
what the runner set around a capture); the default is a plain launch, which Triton's CPU interpreter needs (it has
no griddepcontrol).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

try:  # triton ships with CUDA builds of torch; CPU wheels lack it
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    HAS_TRITON = False

ENV = "LLMSERVE_TRITON_KERNELS"  # "1" (default): on; "0": off; "interpret": every tensor, under TRITON_INTERPRET=1
MODES = ("on", "off", "interpret")
# The SMs the launch-shape rules count on: Hopper's 132 (H100 SXM, H200), where they were swept
NUM_SMS = 132


def mode_from_env(env: Mapping[str, str] | None = None) -> str:
    """The kernel switch from the environment ("on", "off" or "interpret"): read once, at start."""
    env = os.environ if env is None else env
    value = env.get(ENV, "1")
    if value == "interpret":  # tests: through Triton's CPU interpreter, which only TRITON_INTERPRET=1 turns on
        return "interpret" if env.get("TRITON_INTERPRET") == "1" else "off"
    return "off" if value == "0" else "on"


def usable(mode: str, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether a model of `dtype` on `device` takes the Triton path under `mode` (float32 keeps the torch path)."""
    if mode not in MODES:
        raise ValueError(f"kernel mode: expected one of {MODES}, got {mode!r}")
    if not HAS_TRITON or mode == "off" or dtype not in (torch.float16, torch.bfloat16):
        return False
    return mode == "interpret" or torch.device(device).type == "cuda"


def launch_args(pdl: bool) -> dict:
    """Keyword arguments for a linear or fused kernel's launch: its PDL constexpr and, when on, Triton's option."""
    return {"PDL": 1, "launch_pdl": True} if pdl else {"PDL": 0}
