"""mpirun command line for TP/PP > 1, as NVIDIA's launch_triton_server.py builds it."""

from __future__ import annotations

import pytest

from llmserve.engine.manifest import Manifest, write_manifest
from llmserve.launch.mpi import LaunchError, LaunchSpec, build_launch_command, resolve_world

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


def test_the_bundled_servers_backend_and_cache_directories_reach_every_rank():
    spec = LaunchSpec(tp_size=2, backend_directory="/c/ts/backends", cache_directory="/c/ts/caches",
                      tritonserver="/c/ts/bin/tritonserver")
    cmd = build_launch_command(spec)
    assert cmd.count("--backend-directory=/c/ts/backends") == 2 and cmd.count("--cache-directory=/c/ts/caches") == 2
    assert cmd == ["mpirun", "--allow-run-as-root",
                   "-n", "1", "/c/ts/bin/tritonserver", *COMMON, "--backend-directory=/c/ts/backends",
                   "--cache-directory=/c/ts/caches", "--disable-auto-complete-config",
                   "--backend-config=python,shm-region-prefix-name=prefix0_", ":",
                   "-n", "1", "/c/ts/bin/tritonserver", *COMMON, "--backend-directory=/c/ts/backends",
                   "--cache-directory=/c/ts/caches", "--model-control-mode=explicit", "--load-model=llm",
                   "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix1_", ":"]


REBUILD = "python -m build_engines build --checkpoint /m --recipe fp16 --output /o --tp 2 --pp 1"


def repo_with_engine(root, tp: int, pp: int, engine_dir: str = "engine"):
    model = root / "llm"
    (model / engine_dir).mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'parameters { key: "engine" value: { string_value: "tensorrtllm" } }\n'
        f'parameters {{ key: "engine_dir" value: {{ string_value: "{engine_dir}" }} }}\n')
    write_manifest(Manifest(model={}, recipe={"name": "fp16"}, tp_size=tp, pp_size=pp, tensorrt_version="10.14.1",
                            tensorrt_llm_version="1.2.1", gpu_name="H100", compute_capability="9.0", limits={},
                            engine_files={}, rebuild_command=REBUILD), model / engine_dir)
    return root


def test_world_comes_from_the_engine_manifest(tmp_path):
    repo = repo_with_engine(tmp_path, 2, 2, engine_dir="engines/tp2pp2")
    assert resolve_world(repo, None, None) == (2, 2)
    assert resolve_world(repo, 2, 2) == (2, 2)


def test_a_world_that_does_not_match_the_engine_is_refused_with_the_fixing_command(tmp_path):
    repo = repo_with_engine(tmp_path, 2, 1)
    with pytest.raises(LaunchError) as exc:
        resolve_world(repo, 4, 1)
    msg = str(exc.value)
    assert "built for tp=2 pp=1 (an MPI world of 2); --tp 4 --pp 1 would start 4 ranks" in msg
    assert f"python -m llmserve.launch serve --model-repository {repo} --tp 2 --pp 1" in msg
    assert msg.endswith("or rebuild for tp=4 pp=1: " + REBUILD.replace("--tp 2", "--tp 4"))


def test_no_manifest_no_multi_rank_launch(tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.pbtxt").write_text("")
    with pytest.raises(LaunchError, match="takes tp and pp from the engine's build manifest: no build_manifest.json"):
        resolve_world(tmp_path, 2, 1)
