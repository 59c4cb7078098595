"""The server start command: the plain tritonserver line, and the MPI world for TP/PP > 1."""

from llmserve.launch.tritonserver import main


def test_plain_command(capsys, checkpoint):
    assert main(["command", "--http-port", "18080"]) == 0
    line = capsys.readouterr().out
    assert "tritonserver" in line and "--http-port=18080" in line and "--model-control-mode=explicit" in line


def test_tp2_pp2_launches_a_world_of_four(capsys, checkpoint):
    assert main(["command", "--tp", "2", "--pp", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mpirun --allow-run-as-root")
    assert line.count(" -n 1 ") + line.startswith("-n 1") == 4
    for rank in range(4):
        assert f"shm-region-prefix-name=prefix{rank}_" in line
