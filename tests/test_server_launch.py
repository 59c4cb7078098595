"""The server start command: the plain tritonserver line, and the MPI world for TP/PP > 1."""

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
