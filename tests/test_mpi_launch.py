"""mpirun command line for TP/PP > 1, as NVIDIA's launch_triton_server.py builds it."""

from __future__ import annotations

import pytest

from llmserve.launch.mpi import LaunchSpec, build_launch_command

TS = "/opt/tritonserver/bin/tritonserver"
COMMON = ["--model-repository=/models", "--grpc-port=8001", "--http-port=8000", "--metrics-port=8002"]


def rank(i: int, name: str = "llm") -> list[str]:
    worker = [] if i == 0 else ["--model-control-mode=explicit", f"--load-model={name}"]
    return ["-n", "1", TS, *COMMON, *worker, "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name=prefix{i}_", ":"]


def test_tp2_pp2_is_four_ranks_in_one_mpmd_mpirun():
    cmd = build_launch_command(LaunchSpec(tp_size=2, pp_size=2))
    assert cmd == ["mpirun", "--allow-run-as-root", *rank(0), *rank(1), *rank(2), *rank(3)]
    assert cmd.count(TS) == 4 and cmd.count(":") == 4


def test_each_rank_gets_its_own_shared_memory_prefix_and_workers_load_only_the_llm():
    cmd = build_launch_command(LaunchSpec(tp_size=4, model_name="my_llm"))
    prefixes = [a for a in cmd if a.startswith("--backend-config=python,shm-region-prefix-name=")]
    assert prefixes == [f"--backend-config=python,shm-region-prefix-name=prefix{i}_" for i in range(4)]
    assert cmd.count("--load-model=my_llm") == 3 and cmd.count("--model-control-mode=explicit") == 3


def test_world_size_one_needs_no_mpi():
    assert build_launch_command(LaunchSpec(tp_size=1)) == [
        TS, *COMMON, "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix0_"]


def test_ports_log_and_mpi_options():
    spec = LaunchSpec(tp_size=2, model_repository="/repo", http_port=9000, grpc_port=9001, metrics_port=9002,
                      log_file="/tmp/triton.log", oversubscribe=True, allow_run_as_root=False,
                      tritonserver="/srv/bin/tritonserver")
    cmd = build_launch_command(spec)
    assert cmd[:2] == ["mpirun", "--oversubscribe"]
    assert cmd.count("--http-port=9000") == 2 and cmd.count("--model-repository=/repo") == 2
    assert cmd.count("--log-file=/tmp/triton.log") == 1  # rank 0 only
    assert cmd.index("--log-file=/tmp/triton.log") < cmd.index("--load-model=llm")


@pytest.mark.parametrize("spec,message", [
    (LaunchSpec(tp_size=0), "tp_size and pp_size must be >= 1"),
    (LaunchSpec(tp_size=2, pp_size=-1), "tp_size and pp_size must be >= 1"),
    (LaunchSpec(tp_size=2, http_port=70000), "http_port: 70000 is not a TCP port"),
])
def test_invalid_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_launch_command(spec)
