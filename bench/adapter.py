"""The serving layers' own cost: the real tritonserver and our adapter around a model-free engine.

    python -m bench.adapter --concurrency 64,256 --step-ms 15 [--profile DIR]

The synthetic engine (`engine: synthetic`) sleeps `--step-ms` per step, as a GPU step would take without
holding the GIL, and hands every running request one token. With no adapter cost a wave of `c` requests of
`--tokens` tokens would take tokens x step time; what the Triton path loses against that is the adapter,
the Python backend's IPC and the HTTP frontend. `--profile` records the model's stub with py-spy (its
`--idle` off: the hot spots are where the GIL is held). Runs on any machine: no GPU, no model weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.triton_path import STREAMS_PER_CLIENT, Server, drive_triton, model_repository
from bench.workload import summarize


def _stub_pids(server_pid: int) -> list[int]:
    """The Python backend stubs of our tritonserver (one per model instance)."""
    out = subprocess.run(["pgrep", "-P", str(server_pid), "-f", "triton_python_backend_stub"], capture_output=True,
                         text=True).stdout.split()
    if not out:
        raise RuntimeError("no Python backend stub process found")
    return [int(p) for p in out]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.adapter", description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--step-ms", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--profile", help="write a py-spy flame graph per concurrency into this folder")
    ap.add_argument("--out", help="write results.json here")
    ap.add_argument("--streams-per-client", type=int, default=0,
                    help="streams per client process (0: bench.triton_path's default)")
    ap.add_argument("--serving", action="append", default=[], metavar="KEY=VALUE", help="a config.pbtxt parameter")
    ap.add_argument("--instances", type=int, default=1, help="model instances (stubs; they share an engine process)")
    return ap


def _py_spy(server: Server, folder: str, c: int) -> subprocess.Popen:
    """A flame graph of the first stub's process while concurrency c runs."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(["py-spy", "record", "-p", str(_stub_pids(server.proc.pid)[0]), "--format", "raw", "-o",
                            str(Path(folder) / f"stub-c{c}.txt"), "--rate", "200"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1)
    return spy


def _point(a: argparse.Namespace, server: Server, c: int) -> dict:
    """c streams of a.tokens tokens each through Triton: the summary, its ratio to the engine's ideal wall time and
    the stubs' CPU per token."""
    spy = _py_spy(server, a.profile, c) if a.profile else None
    texts = [f"Tell me story number {i}." for i in range(c)]
    stubs = _stub_pids(server.proc.pid)
    cpu0 = sum(map(_cpu_s, stubs))
    records, wall = drive_triton(a.port, texts, a.tokens, c, a.streams_per_client or STREAMS_PER_CLIENT)
    stub_cpu = sum(map(_cpu_s, stubs)) - cpu0  # every instance's stub
    if spy:
        spy.send_signal(2)  # py-spy writes its file on SIGINT
        spy.wait(30)
    s = summarize(records, wall, c, 0, a.tokens)
    ideal = a.tokens * a.step_ms / 1000
    s["ideal_wall_s"] = round(ideal, 3)
    s["ratio_to_ideal"] = round(ideal / wall, 3)
    # The stub's own CPU per generated token: what the adapter costs, whatever the machine's noise.
    s["stub_cpu_us_per_token"] = round(stub_cpu / max(1, c * a.tokens) * 1e6, 1)
    return s


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llm-adapter-"))
    conc = [int(c) for c in a.concurrency.split(",")]
    # The bench's repository (what the GPU runs use: .carry's server where present, SmolLM2's tokenizer) with
    # the synthetic engine; the checkpoint's weights are never made.
    params = {"engine": "synthetic", "synthetic_step_ms": str(a.step_ms), "max_batch_size": str(max(conc)),
              "max_queue_size": str(4 * max(conc)), **dict(kv.split("=", 1) for kv in a.serving)}
    server = Server(work, model_repository(work, params, instances=a.instances), a.port)
    server.start()
    results = []
    try:
        drive_triton(a.port, ["warm up"] * 2, 4, 2)
        for c in conc:
            results.append(_point(a, server, c))
            print(json.dumps({k: results[-1][k] for k in (
                "concurrency", "throughput_tok_s", "wall_s", "ideal_wall_s", "ratio_to_ideal", "errors", "itl_ms_p50",
                "itl_ms_p99", "stub_cpu_us_per_token")}), flush=True)
    finally:
        server.stop()
    if a.out:
        Path(a.out).write_text(json.dumps({"step_ms": a.step_ms, "tokens": a.tokens, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
