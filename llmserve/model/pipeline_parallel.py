"""Pipeline parallelism for the Llama model: each stage keeps a contiguous slice of the decoder layers.

Stage 0 also keeps the embedding, the last stage the final norm and lm_head; the others drop what they do not
run, so a stage's memory is its layers'. The split follows vLLM's get_pp_indices (vllm/distributed/utils.py):
num_layers // stages each, and the remainder one extra layer per stage counting back from the second-to-last,
since the last stage already carries the largest matmul (lm_head) and stage 0 the embedding lookup.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from llmserve.errors import ConfigError


def stage_layers(num_layers: int, stages: int) -> list[range]:
    """The layers of each stage, contiguous and in order: e.g. 5 layers over 2 stages are [0, 1, 2], [3, 4]."""
    sizes = [num_layers // stages] * stages
    for i in range(2, num_layers % stages + 2):
        sizes[-i] += 1
    starts = [sum(sizes[:s]) for s in range(stages)]
    return [range(start, start + size) for start, size in zip(starts, sizes)]


def check_stageable(num_layers: int, stages: int) -> None:
    """Every stage must hold at least one layer (a stage of none would only pass the hidden state on)."""
    if stages > num_layers:
        raise ConfigError(f"pipeline_parallel_size: {stages} stages for the checkpoint's {num_layers} layers "
                          "(num_hidden_layers); each stage needs at least one layer")


def keep_stage(model: nn.Module, stage: int, stages: int) -> nn.Module:
    """Keeps stage `stage`'s layers (renumbered from 0: they index this stage's KV cache) and, on the first and
    last stage, the embedding and the head; returns the model with args.num_layers its layer count. Applied to
    the meta-device model before loading, so a stage reads only its own tensors (loading.stage_rename)."""
    check_stageable(model.args.num_layers, stages)
    if stages == 1:
        return model
    span = stage_layers(model.args.num_layers, stages)[stage]
    model.layers = nn.ModuleList(model.layers[i] for i in span)
    model.first_layer = span.start  # the checkpoint's number of this stage's layer 0 (loading.stage_rename)
    for local, layer in enumerate(model.layers):
        layer.self_attn.layer = local
    if stage > 0:
        model.embed_tokens = None
    if stage < stages - 1:
        model.norm = None
        model.lm_head = None  # a tied lm_head's weight stays the embedding's on the last stage
    # The KV cache and its budget are sized from args: this stage's layers only.
    model.args = dataclasses.replace(model.args, num_layers=len(span))
    return model
