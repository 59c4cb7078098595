"""How a model's layers run (the Triton path or the torch one), shared by every layer that has both. Its own
module so that the 16-bit, 8-bit (linear.py) and 4-bit (int4.py) layers all build on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Launch:
    """How a model's layers run; one object, owned by the model and shared by its layers.
    kernels: the Triton path (chosen at load: llmserve.kernels.usable); pdl: programmatic dependent launch of
    the linear and fused kernels, on only while the runner captures a small decode graph (LlamaModel.pdl_launches);
    fp8_fast_accum: e4m3 products accumulate in the tensor cores' own precision (the `fp8_fast_accum` knob)."""

    kernels: bool = False
    pdl: bool = False
    fp8_fast_accum: bool = True


class KernelLayer(nn.Module):
    """A layer with a Triton path. Alone it has a Launch of its own (the torch path); in a model, the model's."""

    def __init__(self):
        super().__init__()
        self.launch = Launch()


def share_launch(model: nn.Module, launch: Launch) -> None:
    """Hands `launch` to `model` and every layer in it that has a Triton path."""
    for m in model.modules():
        if isinstance(m, KernelLayer):
            m.launch = launch


def silu_gate(x: torch.Tensor) -> torch.Tensor:
    """The MLP's [gate | up] -> silu(gate) * up on the torch path (the kernels take it in their loads or
    epilogues), rounded as the eager ops round it."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class ResidualSum:
    """A one-row linear's output added into the residual stream by its own epilogue (`add_to`): the stream's new
    row, and the sums of its squares (one per program) from which the next RMSNorm's one-row linear folds it.
    weighted: the new row times that norm's weight, where the linear was given it (`next_norm`: int4's)."""

    residual: torch.Tensor  # [1, hidden], updated in place
    sumsq: torch.Tensor  # float32 [programs]
    weighted: torch.Tensor | None = None


@dataclass(frozen=True)
class NormedRow:
    """rmsnorm(x) with weight and eps, left for the one-row linear that reads it to fold into its product: the
    8-bit GEMV multiplies x by the weight in its loop, int4's reads `weighted` (x times the weight, rounded,
    written by the product before) and only scales its outputs."""

    x: torch.Tensor  # [1, hidden]
    weight: torch.Tensor
    sumsq: torch.Tensor
    eps: float
    weighted: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.x.shape
