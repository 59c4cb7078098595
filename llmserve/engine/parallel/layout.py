"""Which GPUs a replica's tensor-parallel ranks use, and the refusals of a layout that does not fit.

A replica is one engine: the Triton instance on GPU g (`instance_group { kind: KIND_GPU gpus: [...] }`), or the
`device` knob's cuda:N. Its `tensor_parallel_size` ranks take GPUs g, g+1, ..., g+tp-1: contiguous, as TensorRT-LLM
and vLLM number their ranks, so the pairs an 8-GPU NVLink board bridges best are neighbours. 4 GPUs as 2 replicas
x TP2 is therefore `gpus: [0, 2]` with tensor_parallel_size 2. Pure arithmetic (no torch): the launcher checks a
whole repository with it before tritonserver starts (llmserve/launch/layout.py), each engine its own replica.
"""

from __future__ import annotations

import os

from llmserve.errors import ConfigError


class LayoutError(ConfigError):
    """A layout of replicas and ranks that the visible GPUs cannot hold; the message names the knobs."""


def replica_gpus(base: int, tensor_parallel_size: int) -> tuple[int, ...]:
    """The GPUs of the replica whose rank 0 is on GPU `base`: rank r on base + r."""
    return tuple(range(base, base + tensor_parallel_size))


def visible_gpus_text(count: int, source: str = "torch.cuda.device_count()") -> str:
    """'2 GPUs are visible (torch.cuda.device_count() = 2, CUDA_VISIBLE_DEVICES=0,1)': what a refusal names."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if env is None else repr(env) if env == "" else env
    are = "GPUs are" if count != 1 else "GPU is"
    return f"{count} {are} visible ({source} = {count}, CUDA_VISIBLE_DEVICES={shown})"


def span(gpus: tuple[int, ...]) -> str:
    return f"GPU {gpus[0]}" if len(gpus) == 1 else f"GPUs {gpus[0]}-{gpus[-1]}"


def suggested_gpus(tensor_parallel_size: int, visible: int) -> str:
    """The instance_group gpus list that fills `visible` GPUs with whole replicas (empty if none fits)."""
    return "[" + ", ".join(str(g) for g in range(0, visible - tensor_parallel_size + 1, tensor_parallel_size)) + "]"


def ranks_knob(pipeline_parallel_size: int) -> str:
    """The knob(s) a replica's rank count comes from, as a refusal names them."""
    return "tensor_parallel_size" if pipeline_parallel_size == 1 else "tensor_parallel_size x pipeline_parallel_size"


def check_replica(base: int, tensor_parallel_size: int, visible: int, visible_text: str,
                  knob: str = "tensor_parallel_size") -> tuple[int, ...]:
    """The replica's GPUs, or a LayoutError naming the knob, the instance's GPU and the visible ones.
    tensor_parallel_size: the replica's ranks (times pipeline_parallel_size, `knob` then names both)."""
    gpus = replica_gpus(base, tensor_parallel_size)
    if gpus[-1] >= visible:
        hint = (f"; with {knob} {tensor_parallel_size} these GPUs hold replicas at instance_group "
                f"gpus: {suggested_gpus(tensor_parallel_size, visible)}" if tensor_parallel_size <= visible else "")
        raise LayoutError(f"{knob}: {tensor_parallel_size} ranks of the replica on GPU {base} "
                          f"(instance_group gpus / device) need {span(gpus)}, but {visible_text}{hint}")
    return gpus


def check_disjoint(replicas: list[tuple[int, ...]], visible: int, knob: str = "tensor_parallel_size") -> None:
    """Two replicas on different GPUs must not share a GPU (each would budget its KV cache on the same memory).
    knob: where a replica's rank count comes from (ranks_knob), as the refusal names it."""
    ordered = sorted(replicas)
    for a, b in zip(ordered, ordered[1:]):
        if set(a) & set(b):
            tp = len(a)
            raise LayoutError(f"instance_group gpus with {knob} {tp}: the replica on GPU {a[0]} uses "
                              f"{span(a)} and the one on GPU {b[0]} uses {span(b)}; each replica needs GPUs of its "
                              f"own: list one GPU per replica, {tp} apart, e.g. gpus: {suggested_gpus(tp, visible)}")
