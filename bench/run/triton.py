"""The Triton phase: the same engine behind the real tritonserver, driven over gRPC streaming with the prompts
its engine-direct twin gets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from statistics import median_high

from bench.common import ROOT
from bench.run.plans import PLAN, QUICK, REPEATS, WORKLOADS, median_repeat, plan_for, progress


def phase_triton(args) -> dict:
    """Starts tritonserver on a model repository holding the random model of the shape with vocab 49152 (SmolLM2's
    tokenizer), runs the plan over HTTP streaming, then stops it. The engine-direct twin runs in phase `engine`
    with the same prompts (--prompts)."""
    from bench.triton_path import Server, drive_triton, model_repository
    from bench.workload import summarize

    plan = plan_for(args, "triton")
    work = Path(args.work)
    prompts = json.loads(Path(args.prompts).read_text())
    texts = json.loads(Path(args.prompts + ".texts").read_text())
    repo = model_repository(work, {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in args.knobs.items()},
                            None if args.mode == "bf16" else args.mode, args.instances, shape=args.shape)
    trace = work / f"steps-{os.getpid()}.txt"  # the engine's eager steps (LLMSERVE_STEP_TRACE), per point
    os.environ["LLMSERVE_STEP_TRACE"] = str(trace)
    server = Server(work, repo)
    t0 = time.time()
    res = {"mode": args.mode, "shape": args.shape, "vocab": 49152, "serving": dict(args.knobs),
           "instances": args.instances, "runs": []}
    try:
        server.start()
        res["start_s"] = round(time.time() - t0, 1)
        drive_triton(server.port, texts["warmup"][:2], 8, 2)  # warm-up, as the engine phases do theirs
        drive_triton(server.port, texts["warmup"][2:], 8, 16)
        jobs = [(w, c) for w, cs in plan.items() for c in cs]
        for wname, c in progress(jobs, desc="triton"):
            in_len, out_len = WORKLOADS[wname]
            reps = []
            for rep in range(REPEATS.get(wname, 1)):
                with open(trace, "a") as f:
                    f.write(f"{time.monotonic():.4f} point {wname} c={c}\n")
                seen = trace.stat().st_size
                records, wall = drive_triton(server.port, texts[wname][str(c)][rep * c:(rep + 1) * c], out_len, c)
                sent, first = [r.submit for r in records], [r.token_times[0] for r in records if r.token_times]
                with open(trace, "a") as f:  # the client's side of the same clock (perf_counter is CLOCK_MONOTONIC)
                    f.write(f"client sent {min(sent):.4f}..{max(sent):.4f} first tokens "
                            f"{min(first, default=0):.4f}..{max(first, default=0):.4f}\n")
                with open(trace) as f:  # the point's trace lines, read once for both summaries
                    f.seek(seen)
                    lines = [ln.split() for ln in f.read().splitlines()]
                s = summarize(records, wall, c, in_len, out_len)
                s["workload"] = wname
                s["intake"] = _intake(lines, min(sent))
                s["intake"]["last_end_to_client_ms"] = _tail_ms(lines, records)
                errs = [r.error for r in records if r.error]
                if errs:
                    s["first_error"] = errs[0]
                reps.append(s)
            s = median_repeat(reps)
            res["runs"].append(s)
            print(json.dumps(s), flush=True)
        assert len(prompts["128x128"]["1"][0]) == 128
    finally:
        server.stop()
        res["server_log_tail"] = server.tail(3000)
        res["step_trace"] = [ln for ln in trace.read_text().splitlines() if ln.split()[1:2] not in (["add"], ["end"])] \
            if trace.is_file() else []
    return res


def _tail_ms(lines: list[list[str]], records: list) -> float | None:
    """From the engine thread's last `end` (the final delta handed to the response path) to the client's last
    token: how far the response path (engine process -> stub -> Triton -> HTTP) trails at the end of a point.
    `lines`: the point's step-trace lines, split into words."""
    ends = [float(ln[0]) for ln in lines if ln[1:2] == ["end"]]
    last = max((r.token_times[-1] for r in records if r.token_times), default=None)
    return round((last - max(ends)) * 1e3, 1) if ends and last is not None else None


def _intake(lines: list[list[str]], first_send: float) -> dict:
    """Where a point's requests spent the time between the client's first send and the engine thread, from the
    service's `add` lines (ms; `*_ms` ranges are first..last request, relative to the client's first send):
    Triton's hand-over to execute() (arrival), the stub's intake up to the pipe (hop0), the engine process's
    reader (hop1, after the pipe and its wait for the GIL), and the engine thread taking it (the line's time)."""
    lines = [ln for ln in lines if ln[1:2] == ["add"]]
    if not lines:
        return {}
    stamps = [[float(ln[0])] + [float(kv.split("=")[1]) for kv in ln[2:]] for ln in lines]
    names = ["arrival", "stub_sent", "engine_read"][:min(len(x) for x in stamps) - 1] + ["engine_took"]
    cols = {name: [x[i + 1] if name != "engine_took" else x[0] for x in stamps] for i, name in enumerate(names)}
    out = {"requests": len(lines)}
    for name, col in cols.items():
        out[f"{name}_ms"] = [round((min(col) - first_send) * 1e3, 1), round((max(col) - first_send) * 1e3, 1)]
    for a, b in zip(names, names[1:]):  # per request, how long each stage held it
        lags = [(y - x) * 1e3 for x, y in zip(cols[a], cols[b])]
        out[f"{a}_to_{b}_ms"] = {"median": round(median_high(lags), 2), "max": round(max(lags), 2)}
    return out


def make_prompt_files(work: Path, quick: bool) -> str:
    """Texts with exactly 128 / 2048 tokens under SmolLM2's tokenizer, and their ids (shared by the Triton
    phase and its engine-direct twin): new ones for every point, so no point finds an earlier one's prompts in
    the prefix cache, and warm-up texts of other lengths."""
    from bench.triton_path import CARRY, exact_length_prompts

    tok = CARRY / "tokenizer" if (CARRY / "tokenizer").is_dir() else ROOT / "model_repository/llm/checkpoint"
    plan = (QUICK if quick else PLAN)["triton"]
    texts: dict = {}
    ids: dict = {}
    for wname, cs in plan.items():
        in_len, _ = WORKLOADS[wname]
        for c in cs:
            t, i = exact_length_prompts(tok, c * REPEATS.get(wname, 1), in_len, seed=in_len * 1000 + c)
            texts.setdefault(wname, {})[str(c)], ids.setdefault(wname, {})[str(c)] = t, i
    # like the engine phases' warm-up: two 64-token prompts, then 16 of 20 to 185 tokens
    texts["warmup"] = exact_length_prompts(tok, 2, 64, seed=99)[0] + [
        exact_length_prompts(tok, 1, 20 + 11 * i, seed=500 + i)[0][0] for i in range(16)]
    path = work / "triton_prompts.json"
    path.write_text(json.dumps(ids))
    Path(str(path) + ".texts").write_text(json.dumps(texts))
    return str(path)
