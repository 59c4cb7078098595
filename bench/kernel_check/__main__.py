"""`python -m bench.kernel_check`: runs the sections named by --sections, in order, then prints the summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.common import LLAMA2_7B
from bench.kernel_check import attention, engine, fp8rows, host, linear, profile, quant, switches
from bench.kernel_check.report import Report

SECTIONS = {"env": engine.s_env, "tests": engine.s_tests, "engine_small": engine.s_engine_small,
            "engine7b": engine.s_engine7b, "pdl": engine.s_pdl, "graphs_bs1": engine.s_graphs_bs1,
            "floor": linear.s_floor, "gemv": linear.s_gemv, "gemv1": linear.s_gemv1, "mm16": linear.s_mm16,
            "fp8rows": fp8rows.s_fp8rows, "switches": switches.s_switches,
            "attn": attention.s_attn, "attn_kv": attention.s_attn_kv, "varlen": attention.s_varlen,
            "varlen_chunk": attention.s_varlen_chunk, "varlen_sweep": attention.s_varlen_sweep,
            "mixed_graph": attention.s_mixed_graph, "int4": quant.s_int4,
            "int8_group": quant.s_int8_group,
            "int4_sweep": quant.s_int4_sweep, "int4_paths": quant.s_int4_paths,
            "int4_wgmma_sweep": quant.s_int4_wgmma_sweep, "host": host.s_host,
            "steady": host.s_steady, "triton": host.s_triton, "profile": profile.s_profile}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel_check")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results/tmp")))
    ap.add_argument("--sections", default="env,tests,floor,attn,gemv1,mm16,engine7b",
                    help=f"comma-separated, from: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.report = Report(args.out)
    assert LLAMA2_7B["hidden_size"] == 4096
    for name in args.sections.split(","):
        SECTIONS[name](args)
    print("\n==== summary")
    for k, v in args.report.results.get("sections", {}).items():
        print(f"{k}: {v}")
    for line in args.report.summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
