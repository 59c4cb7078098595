"""Tensor parallelism for the Llama model: Megatron-style column/row sharding over torch.distributed.

Column-parallel: q/k/v (by whole heads, GQA groups kept together) and gate/up (by intermediate rows).
Row-parallel: o_proj and down_proj take the matching input slice and all-reduce their outputs, so each
layer costs two all-reduces. Quantized weights are sliced with their scales (int8_wo per row; int4 and int8 groups
per group, refused where a rank would split a group); fp8 is refused (activation scales would be per slice).
Embedding, norms and lm_head stay replicated: for a 7B model they are under 4% of the weights, and a replicated
lm_head keeps sampling on one rank without a gather.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from llmserve.errors import ConfigError
from llmserve.model.linear import Fp8Linear, Linear


class AllReduceLinear(nn.Module):
    """A row-parallel linear: local partial product, then the sum across ranks."""

    def __init__(self, linear: nn.Module, group=None):
        super().__init__()
        self.linear = linear
        self.group = group

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.linear(x, **kwargs)
        dist.all_reduce(out, group=self.group)
        return out


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> nn.Module:
    """A Linear over this rank's slice, on the path (Triton or torch) of the layer it replaces, `like`."""
    layer = Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.launch = like.launch
    layer.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return layer


def _halves(t: torch.Tensor, inter: int, start: int, part: int) -> torch.Tensor:
    """Rows start..start+part of both the gate and the up half of a packed gate_up tensor."""
    return torch.cat([h[start:start + part] for h in t.split(inter, dim=0)], dim=0)


def _tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    names = ("weight", "weight_scale", "weight_min", "bias")
    return {n: getattr(m, n) for n in names if getattr(m, n, None) is not None}


def _by_rows(m: nn.Module, take) -> nn.Module:
    """Column parallel: this rank's output rows of every tensor (weight, per-row or per-group scales, bias)."""
    return _rebuilt(m, {n: take(t) for n, t in _tensors(m).items()})


def _by_inputs(m: nn.Module, a: int, b: int) -> nn.Module:
    """Row parallel: inputs a..b-1. Packed int4 codes hold 2 inputs a byte (within a group, so a slice on group
    boundaries is a slice of bytes); per-group scales follow the groups, per-row scales stay whole. No bias: every
    rank would add it before the all-reduce (Llama and Qwen2 have none on o_proj and down_proj)."""
    if getattr(m, "bias", None) is not None:
        raise ConfigError(f"tensor_parallel_size: a row-parallel {type(m).__name__} with a bias is not sharded")
    if isinstance(m, Fp8Linear):
        raise ConfigError("tensor_parallel_size: fp8 checkpoints quantize activations per token, and a rank holds "
                          "only part of o_proj's and down_proj's inputs, so its scales (and answers) would differ "
                          "from one GPU's; serve fp8 with tensor_parallel_size 1, or int8_wo / int4 under TP")
    out = {}
    per_byte = getattr(m, "codes_per_byte", 1)
    group = getattr(m, "group_size", None)
    if group is not None and (a % group or b % group):
        raise ConfigError(f"tensor_parallel_size: a rank's {b - a} inputs of a {type(m).__name__} do not fall on "
                          f"its groups of {group} (group_size); serve it with a smaller tensor_parallel_size")
    for n, t in _tensors(m).items():
        if n == "weight":
            out[n] = t[:, a // per_byte:b // per_byte]
        elif t.dim() == 2:
            out[n] = t[:, a // group:b // group]
        else:
            out[n] = t
    return _rebuilt(m, out)


def _rebuilt(m: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A module of m's kind over `tensors` (a plain Linear, or an empty quantized one whose buffers they fill)."""
    bias = tensors.pop("bias", None)
    if type(m) is Linear:
        return _linear(tensors["weight"], bias, m)
    rows, cols = tensors["weight"].shape
    with torch.device("meta"):
        new = type(m)(cols * getattr(m, "codes_per_byte", 1), rows, bias=bias is not None)
    if "weight_scale" in tensors and tensors["weight_scale"].dim() == 2:  # group formats: size from the scales
        new._set_groups(new.in_features // tensors["weight_scale"].shape[1], tensors["weight_scale"].dtype)
    for n, t in tensors.items():
        setattr(new, n, t.contiguous())
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    new.launch = m.launch
    return new


def check_shardable(args, world: int) -> None:
    for name, value in (("num_attention_heads", args.num_heads), ("num_key_value_heads", args.num_kv_heads),
                        ("intermediate_size", args.intermediate_size)):
        if value % world:
            raise ConfigError(f"tensor_parallel_size: {world} does not divide the checkpoint's {name} ({value})")


@torch.no_grad()
def shard_model(model: nn.Module, rank: int, world: int, group=None) -> nn.Module:
    """Keeps this rank's slice of every parallel layer (in place) and returns the model."""
    args = model.args
    check_shardable(args, world)
    if world == 1:
        return model
    nh, nkv, hd, inter = args.num_heads // world, args.num_kv_heads // world, args.head_dim, args.intermediate_size
    sizes = [args.num_heads * hd, args.num_kv_heads * hd, args.num_kv_heads * hd]
    local = [nh * hd, nkv * hd, nkv * hd]

    def take(t: torch.Tensor) -> torch.Tensor:
        parts = t.split(sizes, dim=0)
        return torch.cat([p[rank * n:(rank + 1) * n] for p, n in zip(parts, local)], dim=0)

    for layer in model.layers:
        attn = layer.self_attn
        attn.qkv_proj = _by_rows(attn.qkv_proj, take)
        attn.nh, attn.nkv = nh, nkv
        attn.o_proj = AllReduceLinear(_by_inputs(attn.o_proj, rank * nh * hd, (rank + 1) * nh * hd), group)
        mlp = layer.mlp
        part = inter // world
        mlp.gate_up_proj = _by_rows(mlp.gate_up_proj, partial(_halves, inter=inter, start=rank * part, part=part))
        mlp.down_proj = AllReduceLinear(_by_inputs(mlp.down_proj, rank * part, (rank + 1) * part), group)
    # The KV cache and anything else sized from args now see this rank's share.
    model.args = dataclasses.replace(args, num_heads=nh, num_kv_heads=nkv, intermediate_size=inter // world)
    return model
