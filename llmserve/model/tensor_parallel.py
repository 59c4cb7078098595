"""Tensor parallelism for the Llama model: Megatron-style column/row sharding over torch.distributed.

Column-parallel: q/k/v (by whole heads, GQA groups kept together) and gate/up (by intermediate rows).
Row-parallel: o_proj and down_proj take the matching input slice and all-reduce their outputs, so each
layer costs two all-reduces. Quantized weights are sliced with their scales (int8_wo / fp8 per row; int4 and int8
groups per group, refused where a rank would split a group). A row-parallel fp8 layer takes the max of each
token's activation amax over the ranks before quantizing, so every rank scales by what one GPU would.
Embedding, norms and lm_head stay replicated: for a 7B model they are under 4% of the weights, and a replicated
lm_head keeps sampling on one rank without a gather.

A rank reads only its slice of the checkpoint: `shard_empty` shapes the empty (meta) model to the rank's sizes and
gives the loader `rank_slicer`'s answer for each tensor (llmserve/model/loading.py reads it with safetensors'
get_slice); `shard_model` then adds the all-reduces. A model made whole in memory (random weights) is sliced by
`shard_model` with the same slicer.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from llmserve.errors import ConfigError
from llmserve.model.linear import Fp8Linear
from llmserve.model.loading import Pieces, Slicer  # what a rank keeps of each tensor

COLUMN = ("self_attn.qkv_proj", "mlp.gate_up_proj")
ROW = ("self_attn.o_proj", "mlp.down_proj")


class AllReduceLinear(nn.Module):
    """A row-parallel linear: local partial product, then the sum across ranks. An fp8 one also takes each
    token's activation amax over the ranks (the max), so its activations quantize as one GPU's would."""

    def __init__(self, linear: nn.Module, group=None):
        super().__init__()
        self.linear = linear
        self.group = group
        if isinstance(linear, Fp8Linear):
            linear.reduce_amax = partial(dist.all_reduce, op=dist.ReduceOp.MAX, group=group)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.linear(x, **kwargs)
        dist.all_reduce(out, group=self.group)
        return out


def rank_slicer(model: nn.Module, rank: int, world: int) -> Slicer:
    """What rank `rank` keeps of a tensor of the whole-sized `model`, by our (stage-local) name, its part among
    those packed into it (q/k/v, gate/up: separate checkpoint tensors) and its shape. Column-parallel tensors
    (weights, per-row or per-group scales, biases): the rank's rows of each part. Row-parallel 2-D tensors: its
    inputs' columns (int4 codes hold 2 inputs a byte, group scales one group a column: a slice on group boundaries
    is a slice of columns); their per-row scales whole."""
    args = model.args
    hd = args.head_dim
    packed = {COLUMN[0]: [args.num_heads * hd, args.num_kv_heads * hd, args.num_kv_heads * hd],
              COLUMN[1]: [args.intermediate_size] * 2}
    inputs = {ROW[0]: args.num_heads * hd, ROW[1]: args.intermediate_size}

    def pieces(key: str, part: int, parts: int, shape: tuple[int, ...]) -> Pieces | None:
        owner = key.rpartition(".")[0]
        kind = owner.split(".", 2)[-1] if owner.startswith("layers.") else ""
        if kind in packed:
            spans, start = [], 0
            for size in packed[kind] if parts == 1 else [shape[0]]:  # a packed tensor, or one part of it
                n = size // world
                spans.append((start + rank * n, start + (rank + 1) * n))
                start += size
            return 0, spans
        if kind in inputs and len(shape) == 2:
            full = inputs[kind]
            step, a, b = full // shape[1], rank * full // world, (rank + 1) * full // world
            if a % step or b % step:
                name = type(model.get_submodule(owner)).__name__
                raise ConfigError(f"tensor_parallel_size: a rank's {b - a} inputs of a {name} do not fall on its "
                                  f"groups of {step} (group_size); serve it with a smaller tensor_parallel_size")
            return 1, [(a // step, b // step)]
        return None
    return pieces


def take(t: torch.Tensor, pieces: Pieces | None) -> torch.Tensor:
    """The pieces of an in-memory tensor (what loading.py reads with get_slice from a file)."""
    if pieces is None:
        return t
    dim, spans = pieces
    return torch.cat([t.narrow(dim, a, b - a) for a, b in spans], dim).contiguous()


def check_shardable(args, world: int) -> None:
    for name, value in (("num_attention_heads", args.num_heads), ("num_key_value_heads", args.num_kv_heads),
                        ("intermediate_size", args.intermediate_size)):
        if value % world:
            raise ConfigError(f"tensor_parallel_size: {world} does not divide the checkpoint's {name} ({value})")


def _empty(m: nn.Module, inputs: int, outputs: int, row: bool) -> nn.Module:
    """An empty (meta) module of m's kind and path at this rank's size (group formats size their groups from the
    scales they load). No bias on a row-parallel one: every rank would add it before the all-reduce (Llama and
    Qwen2 have none on o_proj and down_proj)."""
    if row and getattr(m, "bias", None) is not None:
        raise ConfigError(f"tensor_parallel_size: a row-parallel {type(m).__name__} with a bias is not sharded")
    with torch.device("meta"):
        new = type(m)(inputs, outputs, bias=getattr(m, "bias", None) is not None)
    new.launch = m.launch
    return new


def shard_empty(model: nn.Module, rank: int, world: int) -> nn.Module:
    """Before loading: replaces every parallel layer by an empty one of this rank's size, and leaves on the model
    (`slice_of`) what the loader reads of each tensor. The KV cache and anything else sized from args see this
    rank's share of the heads and MLP rows."""
    args = model.args
    check_shardable(args, world)
    if world == 1:
        return model
    model.slice_of = rank_slicer(model, rank, world)
    nh, nkv, hd, inter = args.num_heads // world, args.num_kv_heads // world, args.head_dim, args.intermediate_size
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = _empty(attn.qkv_proj, args.hidden_size, (nh + 2 * nkv) * hd, row=False)
        attn.o_proj = _empty(attn.o_proj, nh * hd, args.hidden_size, row=True)
        attn.nh, attn.nkv = nh, nkv
        mlp.gate_up_proj = _empty(mlp.gate_up_proj, args.hidden_size, 2 * inter // world, row=False)
        mlp.down_proj = _empty(mlp.down_proj, inter // world, args.hidden_size, row=True)
    model.args = dataclasses.replace(args, num_heads=nh, num_kv_heads=nkv, intermediate_size=inter // world)
    return model


@torch.no_grad()
def shard_model(model: nn.Module, rank: int, world: int, group=None) -> nn.Module:
    """Keeps this rank's slice of every parallel layer (in place) and returns the model, its row-parallel layers
    summing over `group`. A model that shard_empty shaped before loading already holds only its slice."""
    if world == 1:
        check_shardable(model.args, world)
        return model
    if getattr(model, "slice_of", None) is None:  # loaded whole: slice in memory, as the loader would have read
        state = {}
        for i, layer in enumerate(model.layers):
            for kind in COLUMN + ROW:
                m = layer.get_submodule(kind)
                names = ("weight", "weight_scale", "weight_min", "bias")
                state[f"layers.{i}.{kind}"] = {n: getattr(m, n) for n in names if getattr(m, n, None) is not None}
        slicer = rank_slicer(model, rank, world)
        for owner, tensors in state.items():  # every slice first: a refusal leaves the model as it was
            tensors.update({n: take(t, slicer(f"{owner}.{n}", 0, 1, tuple(t.shape))) for n, t in tensors.items()})
        shard_empty(model, rank, world)
        for owner, tensors in state.items():
            model.get_submodule(owner).load_state_dict(tensors, strict=True, assign=True)
    for layer in model.layers:
        layer.self_attn.o_proj = AllReduceLinear(layer.self_attn.o_proj, group)
        layer.mlp.down_proj = AllReduceLinear(layer.mlp.down_proj, group)
    return model
