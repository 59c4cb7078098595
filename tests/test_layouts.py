"""Layouts of our engine over GPUs (issue 19 item 3): which GPUs a replica's tensor-parallel ranks take, and the
launcher's refusal of a layout the visible GPUs cannot hold, checked on a CPU machine by injecting the GPU count."""

from __future__ import annotations

import pytest
import torch

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.parallel.group import check_devices, rank_device
from llmserve.engine.parallel.layout import LayoutError, replica_gpus
from llmserve.launch.layout import InstanceGroup, plan_replicas, read_model_config, set_instance_gpus
from tests.conftest import ROOT


def gpu(*gpus: int, count: int = 1) -> list[InstanceGroup]:
    return [InstanceGroup("KIND_GPU", count, tuple(gpus))]


MODEL = [InstanceGroup("KIND_MODEL")]


@pytest.mark.parametrize("name, tp, groups, visible, expected", [
    ("1 GPU", 1, MODEL, 1, [(0,)]),
    ("2 x TP1", 1, gpu(0, 1), 2, [(0,), (1,)]),
    ("1 x TP2", 2, MODEL, 2, [(0, 1)]),
    ("2 x TP2 on 4 GPUs", 2, gpu(0, 2), 4, [(0, 1), (2, 3)]),
    ("KIND_GPU without gpus: one replica per visible GPU", 1, gpu(), 3, [(0,), (1,), (2,)]),
    ("two instances on a GPU share its engine", 2, gpu(2, count=2), 4, [(2, 3)]),
    ("4 x TP2 on 8 GPUs", 2, gpu(0, 2, 4, 6), 8, [(0, 1), (2, 3), (4, 5), (6, 7)]),
    ("no GPU, device auto: the CPU", 2, MODEL, 0, []),
])
def test_layouts_that_fit(name, tp, groups, visible, expected):
    assert plan_replicas(ServingConfig.of(tensor_parallel_size=tp), groups, visible) == expected, name


@pytest.mark.parametrize("tp, groups, visible, device, words", [
    (2, gpu(0, 1), 4, "auto", ["instance_group gpus", "tensor_parallel_size 2", "GPU 0 uses GPUs 0-1",
                               "GPU 1 uses GPUs 1-2", "gpus: [0, 2]"]),
    (2, gpu(0, 3), 4, "auto", ["tensor_parallel_size: 2 ranks", "GPU 3", "need GPUs 3-4", "4 GPUs are visible",
                               "torch.cuda.device_count() = 4", "gpus: [0, 2]"]),
    (4, MODEL, 2, "auto", ["tensor_parallel_size: 4", "GPUs 0-3", "2 GPUs are visible"]),
    (1, gpu(0, 5), 4, "auto", ["instance_group gpus: [0, 5]", "GPU 5", "4 GPUs are visible"]),
    (1, gpu(0), 0, "auto", ["instance_group kind: KIND_GPU needs a GPU", "0 GPUs are visible"]),
    (1, MODEL, 0, "cuda", ["device: cuda needs a GPU"]),
    (2, MODEL, 8, "cuda:7", ["tensor_parallel_size: 2", "GPU 7", "GPUs 7-8", "8 GPUs are visible"]),
])
def test_layouts_that_do_not_fit_are_refused_naming_the_knobs(tp, groups, visible, device, words):
    with pytest.raises(LayoutError) as err:
        plan_replicas(ServingConfig.of(tensor_parallel_size=tp, device=device), groups, visible)
    for word in words:
        assert word in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_other_engines_have_no_layout_here():
    cfg = ServingConfig.of(engine="tensorrtllm", tensor_parallel_size=4)
    assert plan_replicas(cfg, gpu(0, 1), 2) == []


def test_a_replicas_ranks_take_the_gpus_after_its_own():
    """The engine's device per rank agrees with the launcher's plan: the instance on GPU 2 with TP2 is cuda:2, 3."""
    assert replica_gpus(2, 2) == (2, 3)
    assert [rank_device("cuda:2", r) for r in range(2)] == [torch.device("cuda", 2), torch.device("cuda", 3)]
    assert [rank_device("cuda", r) for r in range(3)] == [torch.device("cuda", g) for g in (0, 1, 2)]
    assert rank_device("cpu", 1) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the refusal on a machine without GPUs")
def test_the_engine_refuses_its_replica_on_gpus_it_does_not_see():
    with pytest.raises(LayoutError, match=r"tensor_parallel_size: 2 ranks of the replica on GPU 1 .* need GPUs 1-2, "
                                          r"but 0 GPUs are visible \(torch.cuda.device_count\(\) = 0"):
        check_devices(ServingConfig.of(tensor_parallel_size=2, device="cuda:1"))
    check_devices(ServingConfig.of(tensor_parallel_size=2, device="cpu"))  # the CPU has room for any rank count


def test_the_real_config_and_a_kind_gpu_rewrite_read_back_through_tritons_schema(tmp_path):
    text = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    cfg, groups = read_model_config(_write(tmp_path / "a", text))
    assert groups == [InstanceGroup("KIND_MODEL", 1, ())] and cfg.pytorch.tensor_parallel_size == 1
    rewritten = set_instance_gpus(text, [0, 2])
    assert len(rewritten.splitlines()) == len(text.splitlines())
    _, groups = read_model_config(_write(tmp_path / "b", rewritten))
    assert groups == [InstanceGroup("KIND_GPU", 1, (0, 2))]


def _write(folder, text):
    folder.mkdir()
    (folder / "config.pbtxt").write_text(text)
    return folder / "config.pbtxt"


def test_the_bench_scaling_axis_plans_every_split_that_fits():
    """bench.scaling's GPU-count axis: each n <= visible as r replicas x TPt (r * t = n), each accepted by the
    launcher's check with the ranks it names; the all-reduce prediction is two per layer of tokens x hidden x 2."""
    from bench.common import shape_config
    from bench.scaling import allreduce_prediction, layouts

    plan = layouts(4)
    assert {(lay.replicas, lay.tp) for lay in plan} == {(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4)}
    with_pp = layouts(4, pp_sizes=(1, 2))
    assert {(lay.replicas, lay.tp, lay.pp) for lay in with_pp if lay.pp == 2} == {(1, 1, 2), (2, 1, 2), (1, 2, 2)}
    for lay in with_pp:
        groups = gpu(*lay.instance_gpus())
        cfg = ServingConfig.of(tensor_parallel_size=lay.tp, pipeline_parallel_size=lay.pp)
        replicas = plan_replicas(cfg, groups, 4)
        assert sorted(g for r in replicas for g in r) == list(range(lay.gpus))
    cfg = shape_config("llama3.1-8b")
    one = allreduce_prediction("llama3.1-8b", 64, 2)
    assert one["bytes_per_step"] == 2 * cfg["num_hidden_layers"] * 64 * cfg["hidden_size"] * 2
    assert allreduce_prediction("llama3.1-8b", 64, 1)["predicted_ms"] == 0
    assert one["predicted_ms"] < allreduce_prediction("llama3.1-8b", 2048, 2)["predicted_ms"]
