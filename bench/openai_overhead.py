"""What the OpenAI-compatible front costs: the same streams through it and directly to Triton over gRPC.

    python -m bench.openai_overhead --concurrency 64,256 --tokens 64 --step-ms 15 --out bench/results/DIR

One real tritonserver serves `engine: synthetic` (no model: each step sleeps --step-ms, then every running request
gets a token), so the serving path is all that is measured. For each concurrency both paths run --repeats times,
alternating, with the same requests (--tokens tokens each, ignore_eos, the prompt as text):
  direct   tritonclient.grpc.aio streaming to the `llm` model (one gRPC stream per request, as the front does)
  openai   aiohttp to `python -m llm_client.openai_server` (/v1/completions, stream, include_usage), which
           forwards each request to the same Triton over gRPC
Reported per point: output tokens/s of each path and their ratio (target >= 0.95), median time to first token
of each and the difference (target <= 1 ms). results.json and results.md go to --out (rewritten after each point).

With equal lengths the streams of a closed loop finish together, so each wave reaches the front as one burst and
the median request waits for half the burst's front CPU. --tokens-spread F gives request i a length drawn from
tokens x [1 - F, 1 + F] (seeded by i: both paths get the same lengths), so after the first wave the streams
drift apart as served traffic does.

One asyncio client parses ~10k server-sent events a second at most: with --streams-per-client N the streams of a
point are spread over ceil(concurrency / N) client processes (both paths alike), so that on a many-core machine the
load generator does not set the pace. The tokenizer comes from `.carry/tokenizer` where that exists (the GPU
machine, which has no checkpoint) and tritonserver from `.carry/tritonserver.tar.xz` under Python 3.12 or where
nvidia-pytriton is not installed (bench/triton_path.py); docs/performance.md "Reproducing" has the GPU command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import ROOT
from bench.triton_path import Server, random_checkpoint
from bench.workload import Record, request_tokens, summarize
from llm_client.client import build_inputs
from llmserve.launch.tritonserver import derive_repository

TARGET_RATIO, TARGET_TTFT_MS = 0.95, 1.0


def _params(tokens: int) -> dict:
    return {"max_tokens": tokens, "ignore_eos": True, "temperature": 0.0}


def _prompt(i: int) -> str:
    # A plain prompt (no chat template): the synthetic engine echoes prompt tokens, and a template's special tokens
    # would make the first tokens empty text, which an OpenAI client sees later than a token count says.
    return f"Tell me story number {i}."


async def _direct_one(client, i: int, tokens: int, rec: Record) -> None:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, value in build_inputs(_prompt(i), None, True, _params(tokens)).items():
        t = aioclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        t.set_data_from_numpy(value)
        tensors.append(t)

    async def requests():
        yield {"model_name": "llm", "inputs": tensors, "request_id": f"d{i}", "enable_empty_final_response": True}

    async for result, error in client.stream_infer(inputs_iterator=requests()):
        if error is not None:
            rec.error = str(error)[:200]
            return
        response = result.get_response()
        if response.outputs:
            n = result.as_numpy("num_output_tokens")
            rec.token_times.extend([time.perf_counter()] * (int(n.reshape(-1)[0]) if n is not None else 1))
        if response.parameters["triton_final_response"].bool_param:
            return


async def _openai_one(session, url: str, i: int, tokens: int, rec: Record) -> None:
    body = {"model": "llm", "prompt": _prompt(i), "stream": True, "stream_options": {"include_usage": True},
            **_params(tokens)}
    used = None
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            return
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            now, msg = time.perf_counter(), json.loads(line[6:])
            if msg.get("usage"):
                used = msg["usage"]["completion_tokens"]
            if msg.get("choices") and msg["choices"][0].get("text"):
                rec.token_times.append(now)
    # a chunk may carry more than one token: the ones not seen are counted at the end (exact token totals)
    if used is not None and used > len(rec.token_times):
        rec.token_times.extend([rec.token_times[-1] if rec.token_times else time.perf_counter()]
                               * (used - len(rec.token_times)))


async def _drive(path: str, target: str, concurrency: int, ids: list[int], tokens: int, spread: float = 0.0,
                 start_at: float | None = None) -> tuple[list[Record], float, float]:
    """Keeps `concurrency` streams in flight until the requests `ids` are answered (closed loop); returns the
    records (each with the length it asked for as `.wanted`), start and end (perf_counter: CLOCK_MONOTONIC,
    shared by the client processes)."""
    import aiohttp
    import tritonclient.grpc.aio as aioclient

    todo, records = list(ids), []
    if path == "direct":
        client = aioclient.InferenceServerClient(target)
        one = lambda i, rec: _direct_one(client, i, request_tokens(i, tokens, spread), rec)  # noqa: E731
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=None))
        one = lambda i, rec: _openai_one(session, target, i, request_tokens(i, tokens, spread), rec)  # noqa: E731

    async def worker():
        while todo:
            i = todo.pop()
            rec = Record(time.perf_counter(), wanted=request_tokens(i, tokens, spread))
            records.append(rec)
            await one(i, rec)

    if start_at is not None:  # the client processes of one point start together
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        end = time.perf_counter()
    finally:
        await (client.close() if path == "direct" else session.close())
    return records, start, end


def _drive_process(job: tuple) -> tuple[list[Record], float, float]:
    return asyncio.run(_drive(*job))


def _ready(_: int) -> int:
    """Pool warm-up: every worker process up, with the client libraries imported."""
    import aiohttp  # noqa: F401
    import tritonclient.grpc.aio  # noqa: F401

    time.sleep(0.5)
    return os.getpid()


def client_pool(processes: int):
    """`processes` spawned client processes, started and warm (None for 1: the bench's own process drives)."""
    if processes <= 1:
        return None
    pool = multiprocessing.get_context("spawn").Pool(processes)
    pool.map(_ready, range(processes), chunksize=1)
    return pool


def drive(path: str, target: str, concurrency: int, requests: int, tokens: int, per_client: int = 0,
          pool=None, spread: float = 0.0) -> tuple[list[Record], float]:
    """`requests` requests, `concurrency` in flight, over ceil(concurrency / per_client) client processes of
    `pool` (one process, this one, when per_client is 0 or the streams fit one); returns the records and wall."""
    procs = math.ceil(concurrency / per_client) if per_client > 0 and pool is not None else 1
    if procs <= 1:
        records, start, end = asyncio.run(_drive(path, target, concurrency, list(range(requests)), tokens, spread))
        return records, end - start
    start_at = time.perf_counter() + 0.3  # the pool's processes are up already
    jobs = [(path, target, len(range(i, concurrency, procs)), list(range(i, requests, procs)), tokens, spread,
             start_at)
            for i in range(procs)]
    parts = pool.map(_drive_process, jobs, chunksize=1)
    return [r for part, _, _ in parts for r in part], max(e for _, _, e in parts) - min(s for _, s, _ in parts)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its children (the front's --workers processes):
    /proc/<pid>/stat fields 14 and 15."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(_cpu_s(c) for c in children)


def measure(path: str, target: str, concurrency: int, waves: int, tokens: int, front_pid: int,
            per_client: int = 0, pool=None, spread: float = 0.0) -> dict:
    cpu0 = _cpu_s(front_pid)
    records, wall = drive(path, target, concurrency, concurrency * waves, tokens, per_client, pool, spread)
    s = summarize(records, wall, concurrency, 0, tokens)
    s["short_responses"] = sum(len(r.token_times) != r.wanted for r in records)
    s["path"] = path
    if per_client > 0 and pool is not None:
        s["client_processes"] = max(1, math.ceil(concurrency / per_client))
    # The front's own CPU per streamed token: its cost whatever the machine's core count (0 on the direct path)
    s["front_cpu_us_per_token"] = round((_cpu_s(front_pid) - cpu0) / max(1, s["output_tokens"]) * 1e6, 1)
    return s


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def point(runs: list[dict], concurrency: int) -> dict:
    """Medians over the repeats of each path, and the two targets."""
    def med(path: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["path"] == path and r["concurrency"] == concurrency)

    d_tps, o_tps = med("direct", "throughput_tok_s"), med("openai", "throughput_tok_s")
    d_ttft, o_ttft = med("direct", "ttft_ms_p50"), med("openai", "ttft_ms_p50")
    ratio, added = round(o_tps / d_tps, 3), round(o_ttft - d_ttft, 2)
    return {"concurrency": concurrency, "front_cpu_us_per_token": med("openai", "front_cpu_us_per_token"),
            "direct_tok_s": d_tps, "openai_tok_s": o_tps, "throughput_ratio": ratio,
            "direct_ttft_p50_ms": d_ttft, "openai_ttft_p50_ms": o_ttft, "ttft_added_p50_ms": added,
            "ratio_target_met": ratio >= TARGET_RATIO, "ttft_target_met": added <= TARGET_TTFT_MS}


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "cores": len(os.sched_getaffinity(0))}
    for pkg in ("nvidia-pytriton", "tritonclient", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "grpcio",
                "protobuf", "numpy", "torch"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            out[pkg] = None
    try:
        out["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln)
    except (OSError, StopIteration):
        pass
    return out


def write_md(res: dict, out: Path) -> None:
    a = res["args"]
    lines = [f"# OpenAI front overhead, `engine: synthetic` ({res['date']})", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['versions'].get('cpu_model', '?')}, {res['versions']['cores']} cores; "
             f"versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items() if k not in ('cpu_model',))}", "",
             f"Each point: {a['waves']} waves of `concurrency` /v1/completions streams of {a['tokens']} tokens"
             + (f" x [1 -+ {a['tokens_spread']}] (seeded per request)" if a.get("tokens_spread") else "")
             + f", step {a['step_ms']} ms; median of {a['repeats']} repeats per path (paths alternate); "
             + (f"client processes of up to {a['streams_per_client']} streams each. "
                if a.get("streams_per_client") else "one client process. ") + "Load average "
             f"(1, 5, 15 min) at the start {res['loadavg_start_end'][0]}, at the end {res['loadavg_start_end'][1]}.",
             "",
             "| streams | direct tok/s | OpenAI tok/s | ratio (>= 0.95) | direct TTFT p50 ms | OpenAI TTFT p50 ms "
             "| added (<= 1 ms) | front CPU µs/token |", "|---|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        lines.append(f"| {p['concurrency']} | {p['direct_tok_s']} | {p['openai_tok_s']} | {p['throughput_ratio']} "
                     f"{'met' if p['ratio_target_met'] else 'MISSED'} | {p['direct_ttft_p50_ms']} | "
                     f"{p['openai_ttft_p50_ms']} | {p['ttft_added_p50_ms']} "
                     f"{'met' if p['ttft_target_met'] else 'MISSED'} | {p['front_cpu_us_per_token']} |")
    lines += ["", "Every run (errors and short answers must be 0):", "",
              "| path | streams | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | wall s | errors | short |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['concurrency']} | {r['throughput_tok_s']} | {r['ttft_ms_p50']} | "
              f"{r['ttft_ms_p99']} | {r['itl_ms_p50']} | {r['wall_s']} | {r['errors']} | {r['short_responses']} |"
              for r in res["runs"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.openai_overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="64,256")
    ap.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--tokens-spread", type=float, default=0.0,
                    help="request i asks for tokens x (1 + F u_i), u_i in [-1, 1] seeded by i (0: all equal, and "
                    "every wave of the closed loop reaches the front as one burst)")
    ap.add_argument("--waves", type=int, default=2, help="requests per point = waves x concurrency")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=15.0)
    ap.add_argument("--front-workers", type=int, default=1, help="the front's --workers (its processes)")
    ap.add_argument("--port", type=int, default=18200, help="Triton HTTP port (gRPC +1, metrics +2); front +3")
    ap.add_argument("--streams-per-client", type=int, default=0,
                    help="spread each point's streams over client processes of at most this many streams (0: all "
                         "in this process, as on the 2-core VM; 64 on the GPU machine's 16 host cores)")
    ap.add_argument("--work", default=None, help="scratch folder (tritonserver unpacked, stub venv, model "
                    "repository, tritonserver.log); default a new temporary one")
    ap.add_argument("--out", required=True)
    return ap


def _start(a: argparse.Namespace, work: Path, conc: list[int]) -> tuple[Server, subprocess.Popen]:
    """tritonserver over the synthetic engine (a fresh random checkpoint and repository in `work`), then the front."""
    for old in ("repo", "ckpt"):
        shutil.rmtree(work / old, ignore_errors=True)
    repo = derive_repository(work / "repo", random_checkpoint(work / "ckpt"), ROOT / "model_repository",
                             engine="synthetic", synthetic_step_ms=str(a.step_ms),
                             max_batch_size=str(max(conc)), max_queue_size=str(4 * max(conc)))
    server = Server(work, repo, a.port)
    print(f"starting tritonserver (synthetic engine, step {a.step_ms} ms) ...", flush=True)
    server.start()
    front = subprocess.Popen([sys.executable, "-m", "llm_client.openai_server", "--triton", f"localhost:{a.port + 1}",
                              "--port", str(a.port + 3), "--log-level", "warning", "--workers", str(a.front_workers)],
                             cwd=ROOT)
    return server, front


def _points(a: argparse.Namespace, conc: list[int], targets: dict[str, str], front_pid: int,
            pool) -> Iterator[tuple[int, list[dict]]]:
    """Both paths warmed, then each concurrency and its runs: `repeats` a path, the paths' order alternating."""
    for path in ("direct", "openai"):  # warm both paths (and every client process)
        measure(path, targets[path], 4, 1, 4, front_pid)
        if pool is not None:
            measure(path, targets[path], max(conc), 1, 4, front_pid, a.streams_per_client, pool)
    for i, c in enumerate(conc):
        runs = []
        for rep in range(a.repeats):
            for path in (("direct", "openai") if rep % 2 == 0 else ("openai", "direct")):
                s = measure(path, targets[path], c, a.waves, a.tokens, front_pid, a.streams_per_client, pool,
                            a.tokens_spread)
                runs.append(s)
                print(f"[{i * a.repeats * 2 + len(runs)}/{len(conc) * a.repeats * 2}] {path:6s} c={c} rep={rep}: "
                      f"{s['throughput_tok_s']} tok/s, TTFT p50 {s['ttft_ms_p50']} ms, errors {s['errors']}",
                      flush=True)
        yield c, runs


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    conc = [int(c) for c in a.concurrency.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="llm-openai-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    server, front = _start(a, work, conc)
    front_url = f"http://127.0.0.1:{a.port + 3}"
    runs: list[dict] = []
    load_start = os.getloadavg()  # other work on the machine shows here: these paths share its cores
    command = "python -m bench.openai_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    pool = None
    done: list[int] = []

    def save() -> None:  # after each point, so that a run cut short still leaves the points it finished
        res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command, "args": vars(a),
               "versions": versions(), "loadavg_start_end": [load_start, os.getloadavg()],
               "points": [point(runs, c) for c in done], "runs": runs}
        (out / "results.json").write_text(json.dumps(res, indent=1))
        write_md(res, out)

    try:
        _wait(f"{front_url}/health")
        if a.streams_per_client > 0:
            pool = client_pool(math.ceil(max(conc) / a.streams_per_client))
        for c, point_runs in _points(a, conc, {"direct": f"localhost:{a.port + 1}", "openai": front_url}, front.pid,
                                     pool):
            runs += point_runs
            done.append(c)
            save()
    finally:
        if pool is not None:
            pool.terminate()
        front.terminate()
        front.wait(15)
        server.stop()
        if len(done) < len(conc):  # cut short: what tritonserver said
            print(server.tail(3000), flush=True)
    save()
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
