"""Tensor parallelism for the Llama model: Megatron-style column/row sharding over torch.distributed.

Column-parallel: q/k/v (by whole heads, GQA groups kept together) and gate/up (by intermediate rows).
Row-parallel: o_proj and down_proj take the matching input slice and all-reduce their outputs, so each
layer costs two all-reduces. Embedding, norms and lm_head stay replicated: for a 7B model they are under
4% of the weights, and a replicated lm_head keeps sampling on one rank without a gather.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from llmserve.errors import ConfigError
from llmserve.model.linear import Linear


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


def check_shardable(args, world: int) -> None:
    for name, value in (("num_attention_heads", args.num_heads), ("num_key_value_heads", args.num_kv_heads),
                        ("intermediate_size", args.intermediate_size)):
        if value % world:
            raise ConfigError(f"tensor_parallel_size: {world} does not divide the checkpoint's {name} ({value})")


def _check_plain(layer: nn.Module) -> None:
    """Only 16/32-bit linears are sliced: a quantized one's scales would need slicing too (not done yet)."""
    for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
        if type(layer.get_submodule(name)) is not Linear:
            raise ConfigError(f"tensor_parallel_size: the {type(layer.get_submodule(name)).__name__} layers of a "
                              "quantized checkpoint are not sharded yet; serve it with tensor_parallel_size 1")


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
        _check_plain(layer)
        attn = layer.self_attn
        w, b = attn.qkv_proj.weight, attn.qkv_proj.bias
        attn.qkv_proj = _linear(take(w), take(b) if b is not None else None, attn.qkv_proj)
        attn.nh, attn.nkv = nh, nkv
        o = attn.o_proj.weight
        attn.o_proj = AllReduceLinear(_linear(o[:, rank * nh * hd:(rank + 1) * nh * hd], None, attn.o_proj), group)
        mlp = layer.mlp
        part = inter // world
        gate, up = mlp.gate_up_proj.weight.split(inter, dim=0)
        mlp.gate_up_proj = _linear(torch.cat([gate[rank * part:(rank + 1) * part],
                                              up[rank * part:(rank + 1) * part]], dim=0), None, mlp.gate_up_proj)
        mlp.down_proj = AllReduceLinear(_linear(mlp.down_proj.weight[:, rank * part:(rank + 1) * part], None,
                                                mlp.down_proj), group)
    # The KV cache and anything else sized from args now see this rank's share.
    model.args = dataclasses.replace(args, num_heads=nh, num_kv_heads=nkv, intermediate_size=inter // world)
    return model
