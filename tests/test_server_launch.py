"""The server start command: the plain tritonserver line, and the MPI world for TP/PP > 1."""

import pytest

from llmserve.launch.tritonserver import main


def test_plain_command(capsys, checkpoint):
    assert main(["command", "--http-port", "18080"]) == 0
    line = capsys.readouterr().out
    assert "tritonserver" in line and "--http-port=18080" in line and "--model-control-mode=explicit" in line


def test_tp2_pp2_launches_a_world_of_four_from_the_engine_manifest(capsys, checkpoint, tmp_path):
    from llmserve.launch.tritonserver import prepare_server_dir
    from tests.test_mpi_launch import repo_with_engine

    repo = repo_with_engine(tmp_path, 2, 2)
    assert main(["command", "--model-repository", str(repo)]) == 0
    line = capsys.readouterr().out.strip()
    d = prepare_server_dir()
    assert line.startswith("mpirun --allow-run-as-root")
    assert line.count(" -n 1 ") + line.startswith("-n 1") == 4
    for rank in range(4):
        assert f"shm-region-prefix-name=prefix{rank}_" in line
    assert line.count(f"--backend-directory={d / 'backends'}") == 4
    assert line.count(f"--cache-directory={d / 'caches'}") == 4
    assert line.count(f"{d / 'bin' / 'tritonserver'} --model-repository={repo.resolve()}") == 4


def test_a_mismatched_world_is_refused_before_launching(capsys, checkpoint, tmp_path):
    from tests.test_mpi_launch import repo_with_engine

    repo = repo_with_engine(tmp_path, 2, 1)
    assert main(["command", "--model-repository", str(repo), "--tp", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--tp 2 --pp 1" in captured.err and "would start 4 ranks" in captured.err


def test_a_layout_the_gpus_cannot_hold_is_refused_before_any_server_starts(capsys, checkpoint, monkeypatch):
    """2 replicas x TP2 listed on GPUs 0 and 1 overlap; on GPUs 0 and 3 of 4 the second needs a fifth. `serve` and
    `command` refuse both, naming the knobs and the GPUs seen, and never reach tritonserver."""
    from llmserve.launch.tritonserver import TritonServer

    def no_start(*_a, **_k):
        raise AssertionError("tritonserver must not start")

    monkeypatch.setattr(TritonServer, "start", no_start)
    monkeypatch.setattr(TritonServer, "command", no_start)
    for gpus, words in (("0,1", ["instance_group gpus with tensor_parallel_size 2", "GPU 1 uses GPUs 1-2"]),
                        ("0,3", ["tensor_parallel_size: 2 ranks", "need GPUs 3-4", "4 GPUs are visible"])):
        for command in ("serve", "command"):
            argv = [command, "--instance-gpus", gpus, "--set", "tensor_parallel_size=2", "--assume-gpus", "4"]
            assert main(argv) == 2
            out = capsys.readouterr()
            assert out.out == "" and all(w in out.err for w in ["error: ", "gpus: [0, 2]", *words]), out.err


def test_a_layout_that_fits_prints_its_replicas_and_the_command(capsys, checkpoint):
    argv = ["command", "--instance-gpus", "0,2", "--set", "tensor_parallel_size=2", "--assume-gpus", "4"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "tritonserver" in out.out
    assert "layout: llm: 2 replica(s) x tensor_parallel_size 2 on GPUs 0-1, GPUs 2-3 of 4 visible" in out.err


def test_wrap_refuses_before_running_the_command(capsys, checkpoint, tmp_path):
    """The GPU containers start tritonserver through `wrap`: its repository is checked first."""
    from llmserve.launch.tritonserver import derive_repository

    repo = derive_repository(tmp_path / "repo", instance_gpus=[0, 1], tensor_parallel_size=2)
    marker = tmp_path / "ran"
    assert main(["wrap", "--assume-gpus", "4", "--", "touch", str(marker), f"--model-repository={repo}"]) == 2
    assert not marker.exists() and "GPU 1 uses GPUs 1-2" in capsys.readouterr().err


def test_the_gpu_count_is_torchs_when_not_given(capsys, checkpoint):
    import torch

    if torch.cuda.device_count():
        pytest.skip("checks the refusal on a machine without GPUs")
    assert main(["command", "--instance-gpus", "0"]) == 2
    err = capsys.readouterr().err
    assert "instance_group kind: KIND_GPU needs a GPU, but 0 GPUs are visible (torch.cuda.device_count() = 0" in err
