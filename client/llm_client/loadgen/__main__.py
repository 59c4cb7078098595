"""`python -m llm_client.loadgen {tools,sweep,parse}`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from llm_client.loadgen.commands import genai_perf_cmd
from llm_client.loadgen.parsers import (
    find_genai_perf_json,
    parse_aiperf_json,
    parse_genai_perf_json,
    parse_perf_analyzer_csv,
    parse_perf_analyzer_profile_export,
)
from llm_client.loadgen.sweeps import expand_sweep, load_sweeps
from llm_client.loadgen.tools import find_tools


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llm_client.loadgen")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tools")
    sw = sub.add_parser("sweep", help="run (or --dry-run print) a genai-perf sweep from sweeps.yaml")
    sw.add_argument("name")
    sw.add_argument("--sweeps", default=None)
    sw.add_argument("--model", default=None)
    sw.add_argument("--url", default=None)
    sw.add_argument("--tokenizer", required=True)
    sw.add_argument("--artifact-dir", default="artifacts/genai-perf")
    sw.add_argument("--dry-run", action="store_true")
    sw.add_argument("--summary", default=None, help="write a JSON list of parsed results here")
    pp = sub.add_parser("parse", help="parse a perf_analyzer CSV / profile export, genai-perf or aiperf JSON")
    pp.add_argument("path")
    return ap


def _tools() -> int:
    t = find_tools()
    for name in ("perf_analyzer", "perf_analyzer_lib", "genai_perf", "aiperf"):
        p = getattr(t, name)
        print(f"{name}={p}{'' if p.exists() else '  (missing)'}")
    return 0


def _parse(path: str) -> int:
    """Any of the load generators' result files, told apart by suffix and their JSON's keys."""
    if path.endswith(".csv"):
        res: Any = parse_perf_analyzer_csv(path)
    else:
        with open(path) as fh:
            head = json.load(fh)
        if "experiments" in head:
            res = parse_perf_analyzer_profile_export(path)
        elif "aiperf_version" in head:
            res = parse_aiperf_json(path)
        else:
            res = parse_genai_perf_json(path)
    print(json.dumps(res, indent=2))
    return 0


def _sweep_point(args: argparse.Namespace, spec: dict) -> dict | None:
    """One point of the sweep: its genai-perf command printed, then (unless --dry-run) run and parsed."""
    run_dir = os.path.join(args.artifact_dir, spec["run_name"])
    argv, env = genai_perf_cmd(
        args.model or spec.get("model", "llm"), args.url or spec.get("url", "localhost:8001"), args.tokenizer,
        spec["concurrency"], int(spec.get("num_prompts", 100)), spec["input_tokens_mean"],
        spec["output_tokens_mean"], run_dir, bool(spec.get("streaming", True)),
        request_rate=spec["request_rate"], request_count=spec.get("request_count"),
        warmup_request_count=int(spec.get("warmup_request_count", 0)),
        server_metrics_url=spec.get("server_metrics_url"))
    print(shlex.join(argv), flush=True)
    if args.dry_run:
        return None
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    subprocess.run(argv, env=env, check=True)
    return {**parse_genai_perf_json(find_genai_perf_json(run_dir)), "run_name": spec["run_name"]}


def _sweep(args: argparse.Namespace) -> int:
    doc = load_sweeps(args.sweeps)
    if not args.dry_run:
        find_tools().require("genai_perf")
    results = []
    for spec in expand_sweep(doc, args.name):  # one genai-perf run after another
        point = _sweep_point(args, spec)
        if point is not None:
            results.append(point)
    if args.summary and results:
        with open(args.summary, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_client.loadgen {tools,sweep,parse}``: print tool paths, sweep commands, or parsed results."""
    args = _parser().parse_args(argv)
    if args.cmd == "tools":
        return _tools()
    if args.cmd == "parse":
        return _parse(args.path)
    return _sweep(args)


if __name__ == "__main__":
    raise SystemExit(_main())
