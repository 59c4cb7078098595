"""The GPU-count axis (issue 19 item 4): the same workloads through the real tritonserver for every layout of
replicas x tensor_parallel_size x pipeline_parallel_size that the visible GPUs hold.

    python -m bench.scaling --dry-run --assume-gpus 8            # the layouts and their checks, no GPU needed
    python -m bench.scaling --out /tmp/scale --shape llama3.1-8b  # on a multi-GPU machine: 1, 2, 4, ... GPUs
    python -m bench.scaling --predict --shape llama3.1-8b         # docs/performance.md's predicted all-reduce cost
    python -m bench.scaling --cpu-smoke --assume-gpus 2 --workloads smoke --concurrency 2 --out /tmp/s  # plumbing, CPU

A layout of n GPUs is r replicas x t ranks (r * t = n): one tritonserver whose model has `instance_group { kind:
KIND_GPU gpus: [0, t, 2t, ...] }` and tensor_parallel_size t (each replica's ranks take the t GPUs from its own,
llmserve/engine/parallel/layout.py), checked by the launcher's layout check before the server starts. Each point
drives `concurrency` streams in total (the same prompts for every layout), so throughput per GPU compares layouts
directly. Random weights of --shape with SmolLM2's tokenizer, as bench.run's Triton phase. Writes results.json and
results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import DEFAULT_SHAPE, SHAPES, environment, shape_config
from bench.triton_path import Server, drive_triton, exact_length_prompts, model_repository
from bench.workload import summarize
from llmserve.config import ServingConfig
from llmserve.launch.layout import InstanceGroup, check_repository, plan_replicas, set_instance_gpus
from llmserve.launch.tritonserver import set_instance_count

SIZES = (1, 2, 4, 8)  # GPU counts on the axis (those the machine holds)
WORKLOADS = {"128x128": (128, 128), "2048x128": (2048, 128), "128x2048": (128, 2048), "smoke": (16, 8)}
SERVING = {"max_batch_size": 256, "max_num_tokens": 2048, "kv_cache_free_mem_fraction": 0.85, "dtype": "bfloat16",
           "max_queue_delay_us": 20000, "queue_delay_gap_us": 2000}
# --cpu-smoke: the same plumbing on a machine without GPUs (replicas as instances with an engine each, gloo ranks)
CPU_SMOKE = {"device": "cpu", "dtype": "float32", "kv_cache_memory_bytes": 1 << 24, "max_batch_size": 16,
             "max_num_tokens": 256, "max_queue_delay_us": 0, "queue_delay_gap_us": 0}
NVLINK_GBS = 450.0  # NVLink 4 (H100/H200 SXM): 900 GB/s total, 450 GB/s each way, per GPU (docs/performance.md)
ALLREDUCE_LATENCY_US = 10.0  # a small NCCL all-reduce within one NVLink node (a prediction's assumption)


@dataclass(frozen=True)
class Layout:
    replicas: int
    tp: int
    pp: int = 1

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp * self.pp

    @property
    def name(self) -> str:
        return f"{self.replicas}x TP{self.tp}" + (f" PP{self.pp}" if self.pp > 1 else "")

    def instance_gpus(self) -> list[int]:
        return list(range(0, self.gpus, self.tp * self.pp))


def layouts(visible: int, sizes: tuple[int, ...] = SIZES, pp_sizes: tuple[int, ...] = (1,)) -> list[Layout]:
    """Every replicas x TP x PP split of each GPU count up to `visible`, fewest GPUs first (PP: `--pp 1,2`)."""
    return [Layout(n // (tp * pp), tp, pp) for n in sizes if n <= visible for pp in pp_sizes for tp in sizes
            if tp * pp <= n and n % (tp * pp) == 0]


def allreduce_prediction(shape: str, tokens: int, tp: int, dtype_bytes: int = 2) -> dict:
    """Bytes and time of one step's all-reduces for `tokens` tokens: two per layer (after attention's output
    projection and after the MLP's down projection), each tokens x hidden x dtype_bytes; a ring moves
    2 (t-1) / t of that over each GPU's link, and each all-reduce pays a fixed latency."""
    cfg = shape_config(shape)
    per = tokens * cfg["hidden_size"] * dtype_bytes
    count = 2 * cfg["num_hidden_layers"]
    wire = 2 * (tp - 1) / tp * per
    us = count * (wire / (NVLINK_GBS * 1e9) * 1e6 + ALLREDUCE_LATENCY_US) if tp > 1 else 0.0
    return {"tp": tp, "tokens": tokens, "allreduces": count, "bytes_each": per, "bytes_per_step": count * per,
            "wire_bytes_per_gpu": round(count * wire), "predicted_ms": round(us / 1000, 3)}


def _repository(work: Path, layout: Layout, shape: str, visible: int, cpu_smoke: bool = False) -> Path:
    params = {k: str(v) for k, v in (SERVING | (CPU_SMOKE if cpu_smoke else {})).items()}
    repo = model_repository(work, params | {"tensor_parallel_size": str(layout.tp),
                                          "pipeline_parallel_size": str(layout.pp)}, shape=shape)
    config = repo / "llm" / "config.pbtxt"
    text = config.read_text()
    config.write_text(set_instance_count(text, layout.replicas) if cpu_smoke
                      else set_instance_gpus(text, layout.instance_gpus()))
    check_repository(repo, visible)  # the launcher's refusal, before any server starts
    return repo


def run_layout(work: Path, layout: Layout, args: argparse.Namespace) -> dict:
    repo = _repository(work, layout, args.shape, args.visible, args.cpu_smoke)
    server = Server(work, repo)
    res = {"layout": asdict(layout), "name": layout.name, "gpus": layout.gpus, "points": []}
    t0 = time.time()
    try:
        server.start()
        res["start_s"] = round(time.time() - t0, 1)
        texts, _ = exact_length_prompts(repo / "llm" / "checkpoint", 8, 32, seed=1)
        drive_triton(server.port, texts, 8, 8)  # warm-up
        for wname in args.workloads:
            in_len, out_len = WORKLOADS[wname]
            for c in args.concurrency:
                prompts, _ = exact_length_prompts(repo / "llm" / "checkpoint", c, in_len, seed=c)
                records, wall = drive_triton(server.port, prompts, out_len, c)
                point = summarize(records, wall, c, in_len, out_len) | {"workload": wname}
                point["tok_s_per_gpu"] = round(point["throughput_tok_s"] / layout.gpus, 1)
                res["points"].append(point)
                print(json.dumps({"layout": layout.name, **point}), flush=True)
    finally:
        server.stop()
        res["server_log_tail"] = server.tail(2000)
    return res


def report(results: list[dict]) -> str:
    lines = ["| layout | GPUs | workload | streams | tok/s | tok/s per GPU | TTFT P50 ms | ITL P50 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for p in r.get("points", []):
            lines.append(f"| {r['name']} | {r['gpus']} | {p['workload']} | {p['concurrency']} | "
                         f"{p['throughput_tok_s']} | {p['tok_s_per_gpu']} | {p['ttft_ms_p50']} | {p['itl_ms_p50']} | "
                         f"{p['errors']} |")
        if "error" in r:
            lines.append(f"| {r['name']} | {r['gpus']} | failed: {r['error'][:200]} | | | | | | |")
    return "\n".join(lines) + "\n"


def _dry_run(args: argparse.Namespace) -> int:
    """The layouts this machine (or --assume-gpus) holds, each through the launcher's check."""
    for layout in layouts(args.visible, pp_sizes=args.pp):
        groups = [InstanceGroup("KIND_GPU", 1, tuple(layout.instance_gpus()))]
        cfg = ServingConfig.of(tensor_parallel_size=layout.tp, pipeline_parallel_size=layout.pp)
        replicas = plan_replicas(cfg, groups, args.visible)
        print(f"{layout.name:>10}: {layout.gpus} GPU(s), instance_group gpus {layout.instance_gpus()}, "
              f"ranks on {[list(r) for r in replicas]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/scaling")
    ap.add_argument("--shape", default=DEFAULT_SHAPE, choices=sorted(SHAPES))
    ap.add_argument("--workloads", type=lambda s: s.split(","), default=["128x128", "2048x128"])
    ap.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 64, 256])
    ap.add_argument("--assume-gpus", type=int, default=None, help="with --dry-run: plan for this many GPUs")
    ap.add_argument("--pp", type=lambda s: tuple(int(p) for p in s.split(",")), default=(1,),
                    help="pipeline_parallel_size values on the axis (default 1; `--pp 1,2` adds the PP layouts)")
    ap.add_argument("--dry-run", action="store_true", help="list the layouts and their checks; start nothing")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: every layout's plumbing on the CPU with a tiny "
                    "model (sets LLMSERVE_BENCH_TINY=1; use with --assume-gpus N --workloads smoke --concurrency 2)")
    ap.add_argument("--predict", action="store_true", help="print the predicted all-reduce cost per step")
    args = ap.parse_args(argv)
    if args.predict:
        for tp in (2, 4, 8):
            for tokens in (1, 64, 256, 2048):
                print(json.dumps(allreduce_prediction(args.shape, tokens, tp)))
        return 0
    if args.assume_gpus is None:
        import torch  # heavy: only to count the GPUs

        args.visible = torch.cuda.device_count()
    else:
        args.visible = args.assume_gpus
    if args.dry_run:
        return _dry_run(args)
    if args.cpu_smoke:
        os.environ["LLMSERVE_BENCH_TINY"] = "1"  # bench.common's switch for tiny dimensions of the shape
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for layout in layouts(args.visible, pp_sizes=args.pp):
        try:
            results.append(run_layout(out / "work", layout, args))
        except Exception as exc:  # noqa: BLE001 - one failed layout must not lose the others' figures
            results.append({"name": layout.name, "gpus": layout.gpus, "error": f"{type(exc).__name__}: {exc}"})
        (out / "results.json").write_text(json.dumps({"env": environment(), "results": results}, indent=1))
    (out / "results.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
