"""The launcher's layout check: every replica of our engine in a model repository fits the visible GPUs.

Run before tritonserver starts (`serve`, `command`, `wrap`), so a layout that cannot be served fails in a second
naming its knobs (tensor_parallel_size, instance_group count / kind / gpus, device) and the GPUs this machine
shows, instead of after minutes of loading with a CUDA error from one stub. Replicas are counted as the adapter
and the engine make them: a KIND_GPU instance on GPU g runs its engine on cuda:g (device auto or cuda), other
kinds on the `device` knob's GPU; instances on one GPU share one engine process; a replica's ranks take GPUs
g..g+tp-1 (llmserve/engine/parallel/layout.py). config.pbtxt is read with Triton's own protobuf schema.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llmserve.config import ServingConfig
from llmserve.engine.parallel.layout import (
    LayoutError,
    check_disjoint,
    check_replica,
    ranks_knob,
    span,
    visible_gpus_text,
)

__all__ = ["InstanceGroup", "LayoutError", "check_repository", "gpu_list", "layout_fits", "plan_replicas",
           "repository_of", "set_instance_gpus", "visible_gpu_count"]
_KIND = model_config_pb2.ModelInstanceGroup.Kind


@dataclass(frozen=True)
class InstanceGroup:
    kind: str  # KIND_AUTO | KIND_GPU | KIND_CPU | KIND_MODEL
    count: int = 1
    gpus: tuple[int, ...] = ()


def read_model_config(path: Path) -> tuple[ServingConfig, list[InstanceGroup]] | None:
    """Our model's knobs and instance groups from a config.pbtxt; None for a model that is not ours (no
    `engine` parameter)."""
    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    params = {key: value.string_value for key, value in config.parameters.items()}
    if "engine" not in params:
        return None
    groups = [InstanceGroup(_KIND.Name(g.kind), g.count or 1, tuple(g.gpus)) for g in config.instance_group]
    return ServingConfig.from_parameters(params), groups or [InstanceGroup("KIND_AUTO")]


def _device_index(cfg: ServingConfig, visible: int, visible_text: str) -> int | None:
    """The GPU a non-KIND_GPU instance's engine starts on; None on the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and visible == 0):
        return None
    if visible == 0:
        raise LayoutError(f"device: {cfg.device} needs a GPU, but {visible_text}")
    return int(cfg.device.partition(":")[2] or 0)


def _group_bases(group: InstanceGroup, cfg: ServingConfig, visible: int, visible_text: str) -> list[int]:
    kind = group.kind if group.kind != "KIND_AUTO" else ("KIND_GPU" if visible else "KIND_CPU")
    if kind != "KIND_GPU":
        base = _device_index(cfg, visible, visible_text)
        return [] if base is None else [base]
    if visible == 0:
        raise LayoutError(f"instance_group kind: KIND_GPU needs a GPU, but {visible_text}")
    outside = [g for g in group.gpus if not 0 <= g < visible]
    if outside:
        raise LayoutError(f"instance_group gpus: {list(group.gpus)} names GPU {outside[0]}, but {visible_text}")
    if cfg.device not in ("auto", "cuda"):  # the adapter keeps an explicit device for every instance
        base = _device_index(cfg, visible, visible_text)
        return [] if base is None else [base]
    return list(group.gpus or range(visible))


def plan_replicas(cfg: ServingConfig, groups: list[InstanceGroup], visible: int,
                  visible_text: str | None = None) -> list[tuple[int, ...]]:
    """Each engine replica's GPUs (empty: on the CPU), or a LayoutError naming the knobs."""
    text = visible_text or visible_gpus_text(visible)
    if cfg.engine != "pytorch":  # TensorRT-LLM's world comes from its manifest (mpi.py); synthetic has no device
        return []
    bases = sorted({b for g in groups for b in _group_bases(g, cfg, visible, text)})
    knob = ranks_knob(cfg.pytorch.pipeline_parallel_size)
    replicas = [check_replica(b, cfg.pytorch.world_size, visible, text, knob) for b in bases]
    check_disjoint(replicas, visible, knob)
    return replicas


def visible_gpu_count() -> int:
    import torch  # heavy: only when a model of ours may run on a GPU

    return torch.cuda.device_count()


def check_repository(repo: Path, visible: int | None = None,
                     count: Callable[[], int] = visible_gpu_count) -> list[str]:
    """Checks every model of ours in `repo`; one line per model saying where its replicas run. `visible`
    injects the GPU count (tests on a CPU machine); otherwise `count()` is asked once."""
    lines, source = [], "--assume-gpus"
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        read = read_model_config(path)
        if read is None:
            continue
        cfg, groups = read
        if cfg.engine != "pytorch":
            lines.append(_summary(path.parent.name, cfg, [], 0))
            continue
        if visible is None:
            visible, source = count(), "torch.cuda.device_count()"
        replicas = plan_replicas(cfg, groups, visible, visible_gpus_text(visible, source))
        lines.append(_summary(path.parent.name, cfg, replicas, visible))
    return lines


def _summary(model: str, cfg: ServingConfig, replicas: list[tuple[int, ...]], visible: int) -> str:
    if not replicas:
        return f"{model}: engine {cfg.engine}, no GPU layout to check"
    tp, pp = cfg.pytorch.tensor_parallel_size, cfg.pytorch.pipeline_parallel_size
    ranks = f"tensor_parallel_size {tp}" + (f" x pipeline_parallel_size {pp}" if pp > 1 else "")
    where = ", ".join(span(r) for r in replicas)
    return f"{model}: {len(replicas)} replica(s) x {ranks} on {where} of {visible} visible"


def set_instance_gpus(config: str, gpus: list[int], count: int = 1) -> str:
    """config.pbtxt text whose instance_group is one KIND_GPU group on `gpus` (a replica each)."""
    listed = ", ".join(str(g) for g in gpus)
    line = f"instance_group [ {{ count: {count}, kind: KIND_GPU, gpus: [ {listed} ] }} ]"
    config, n = re.subn(r"^instance_group \[.*\]$", line, config, flags=re.M)
    if n != 1:
        raise ValueError("config.pbtxt: expected one single-line `instance_group [ ... ]`")
    return config


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(g) for g in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,2, got {text!r}") from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct GPU indices >= 0, got {text!r}")
    return gpus


def repository_of(command: list[str]) -> Path | None:
    """The --model-repository of a tritonserver command line (the first; Triton accepts several)."""
    for i, arg in enumerate(command):
        if arg.startswith("--model-repository="):
            return Path(arg.partition("=")[2])
        if arg == "--model-repository" and i + 1 < len(command):
            return Path(command[i + 1])
    return None


def layout_fits(repo: Path, assume_gpus: int | None) -> bool:
    """Checks our models' replicas against the visible GPUs (or --assume-gpus); prints the layout or the refusal."""
    try:
        for line in check_repository(repo, assume_gpus):
            print(f"layout: {line}", file=sys.stderr, flush=True)
    except LayoutError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return False
    return True
