"""Performance targets (``client/targets/*.yaml``): load, validate and evaluate measured metrics against them.

File schema::

    name: a100-fp16
    gpu: A100-80GB            # or H100-80GB, cpu
    precision: fp16           # fp16 | bf16 | fp8 | int8 | int8_sq | int4_awq | q4_1 | fp32 ...
    model: llama-2-7b
    workload: {input_tokens: 128, output_tokens: 128, concurrency: 8}
    targets:
      - metric: output_token_throughput_tok_s   # a key of METRICS (what loadgen's parsers produce)
        op: ">="                                # ">=" or "<="
        value: 380
        unit: tok/s                             # must be the metric's unit
        source: "guide §2.2"                    # "guide §..." (deployment guide) or "ours"
        workload: {concurrency: 8}              # optional: overrides fields of the file's workload
        note: free text                         # optional

``evaluate(target_set, measured, measured_by_concurrency=None)`` returns one ``Row`` per target; measured values
are looked up in ``measured_by_concurrency[c]`` (``c`` = the target's effective concurrency) first, then in
``measured``. A missing metric gives ``passed=None`` (not measured), which ``all_passed`` counts as a failure.

CLI: ``python -m llm_client.targets check client/targets/cpu-smollm2.yaml RESULT.json [RESULT.json ...]`` where each
RESULT is a genai-perf ``profile_export_genai_perf.json`` (its concurrency is read from the file) or a flat JSON
dict of metric -> value. Exit status 1 when a target fails or is not measured.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "Workload", "Target", "TargetSet", "Row", "TargetError", "load_targets", "load_all",
           "parse_target_set", "evaluate", "all_passed", "format_rows"]

_STATS = ("avg", "min", "max", "p50", "p90", "p95", "p99")


def _metric_units() -> dict[str, str]:
    units: dict[str, str] = {}
    for series in ("ttft", "itl", "request_latency", "ttst"):
        for s in _STATS:
            units[f"{series}_{s}_ms"] = "ms"
    for s in _STATS:
        units[f"output_token_throughput_per_user_{s}_tok_s"] = "tok/s/user"
    units.update({
        "output_token_throughput_tok_s": "tok/s",
        "request_throughput_req_s": "req/s",
        "request_goodput_req_s": "req/s",
        "output_sequence_length_avg": "tokens",
        "input_sequence_length_avg": "tokens",
        "request_count": "count",
        # server-side (Prometheus) figures a caller may add to the measured dict
        "gpu_memory_used_ratio_max": "ratio",
        "response_repetition_ratio_avg": "ratio",
    })
    return units


METRICS: dict[str, str] = _metric_units()
OPS = {">=": lambda m, v: m >= v, "<=": lambda m, v: m <= v}
_SOURCE_RE = re.compile(r"^(ours|guide §\S.*)$")
_PRECISIONS = {"fp32", "fp16", "bf16", "fp8", "int8", "int8_sq", "int8_wo", "int4_awq", "int4_gptq", "nvfp4",
               "q4_1", "q4_k", "q6_k", "any"}


class TargetError(ValueError):
    """A targets file does not follow the schema."""


@dataclass(frozen=True)
class Workload:
    input_tokens: int
    output_tokens: int
    concurrency: int


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float
    unit: str
    source: str
    workload: Workload
    note: str = ""

    def check(self, measured: float) -> bool:
        return bool(OPS[self.op](measured, self.value))


@dataclass(frozen=True)
class TargetSet:
    name: str
    gpu: str
    precision: str
    model: str
    workload: Workload
    targets: tuple[Target, ...]
    path: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Row:
    target_set: str
    metric: str
    op: str
    target: float
    unit: str
    measured: float | None
    passed: bool | None
    source: str
    concurrency: int
    input_tokens: int
    output_tokens: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def status(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


def _req(doc: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise TargetError(f"{where}: missing '{key}'")
    val = doc[key]
    if not isinstance(val, typ) or isinstance(val, bool) and typ is not bool:
        raise TargetError(f"{where}: '{key}' must be {getattr(typ, '__name__', typ)}, got {val!r}")
    return val


def _no_unknown(doc: Mapping[str, Any], known: set[str], where: str, what: str = "keys") -> None:
    unknown = set(doc) - known
    if unknown:
        raise TargetError(f"{where}: unknown {what} {sorted(unknown)}")


def _workload(doc: Any, where: str, base: Workload | None = None) -> Workload:
    if not isinstance(doc, Mapping):
        raise TargetError(f"{where}: workload must be a mapping")
    _no_unknown(doc, {"input_tokens", "output_tokens", "concurrency"}, where, "workload keys")
    vals = dict(base.__dict__) if base else {}
    for k in ("input_tokens", "output_tokens", "concurrency"):
        if k in doc:
            v = doc[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TargetError(f"{where}: workload.{k} must be a positive integer, got {v!r}")
            vals[k] = v
        elif base is None:
            raise TargetError(f"{where}: workload missing '{k}'")
    return Workload(**vals)


def parse_target_set(doc: Any, path: str | None = None) -> TargetSet:
    where = path or "<targets>"
    if not isinstance(doc, Mapping):
        raise TargetError(f"{where}: top level must be a mapping")
    _no_unknown(doc, {"name", "gpu", "precision", "model", "workload", "targets", "description"}, where)
    name = _req(doc, "name", str, where)
    gpu = _req(doc, "gpu", str, where)
    precision = _req(doc, "precision", str, where)
    if precision not in _PRECISIONS:
        raise TargetError(f"{where}: precision {precision!r} not one of {sorted(_PRECISIONS)}")
    model = _req(doc, "model", str, where)
    workload = _workload(_req(doc, "workload", Mapping, where), where)
    raw_targets = _req(doc, "targets", list, where)
    if not raw_targets:
        raise TargetError(f"{where}: 'targets' is empty")
    targets = tuple(_target(t, f"{where}: targets[{i}]", workload) for i, t in enumerate(raw_targets))
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise TargetError(f"{where}: description must be a string")
    return TargetSet(name, gpu, precision, model, workload, targets, path, description)


def _target(t: Any, tw: str, workload: Workload) -> Target:
    """One entry of `targets`, each field checked and named in the error; its workload defaults to the file's."""
    if not isinstance(t, Mapping):
        raise TargetError(f"{tw}: must be a mapping")
    _no_unknown(t, {"metric", "op", "value", "unit", "source", "workload", "note"}, tw)
    metric = _req(t, "metric", str, tw)
    if metric not in METRICS:
        raise TargetError(f"{tw}: unknown metric {metric!r} (known: {', '.join(sorted(METRICS))})")
    op = _req(t, "op", str, tw)
    if op not in OPS:
        raise TargetError(f"{tw}: op must be '>=' or '<=', got {op!r}")
    value = _req(t, "value", (int, float), tw)
    if not math.isfinite(float(value)):
        raise TargetError(f"{tw}: value must be finite")
    unit = _req(t, "unit", str, tw)
    if unit != METRICS[metric]:
        raise TargetError(f"{tw}: unit {unit!r} does not match {metric} ({METRICS[metric]})")
    source = _req(t, "source", str, tw)
    if not _SOURCE_RE.match(source):
        raise TargetError(f"{tw}: source must be 'ours' or 'guide §...', got {source!r}")
    own = _workload(t["workload"], tw, workload) if "workload" in t else workload
    note = t.get("note", "")
    if not isinstance(note, str):
        raise TargetError(f"{tw}: note must be a string")
    return Target(metric, op, float(value), unit, source, own, note)


def load_targets(path: str | os.PathLike[str]) -> TargetSet:
    import yaml

    with open(path) as fh:
        doc = yaml.safe_load(fh)
    return parse_target_set(doc, str(path))


def default_targets_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "targets"


def load_all(directory: str | os.PathLike[str] | None = None) -> dict[str, TargetSet]:
    d = Path(directory) if directory else default_targets_dir()
    sets = {}
    for p in sorted(d.glob("*.yaml")):
        ts = load_targets(p)
        if ts.name in sets:
            raise TargetError(f"{p}: duplicate target set name {ts.name!r}")
        sets[ts.name] = ts
    return sets


def evaluate(target_set: TargetSet, measured: Mapping[str, Any] | None = None,
             measured_by_concurrency: Mapping[int, Mapping[str, Any]] | None = None) -> list[Row]:
    rows = []
    for t in target_set.targets:
        val: Any = None
        if measured_by_concurrency and t.workload.concurrency in measured_by_concurrency:
            val = measured_by_concurrency[t.workload.concurrency].get(t.metric)
        if val is None and measured:
            val = measured.get(t.metric)
        m = float(val) if isinstance(val, (int, float)) and not isinstance(val, bool) else None
        rows.append(Row(target_set.name, t.metric, t.op, t.value, t.unit, m, None if m is None else t.check(m),
                        t.source, t.workload.concurrency, t.workload.input_tokens, t.workload.output_tokens, t.note))
    return rows


def all_passed(rows: Iterable[Row]) -> bool:
    rows = list(rows)
    return bool(rows) and all(r.passed is True for r in rows)


def format_rows(rows: Sequence[Row]) -> str:
    lines = [f"{'result':6} {'metric':42} {'conc':>5} {'measured':>12} {'op':2} {'target':>10} unit  source"]
    for r in rows:
        meas = "-" if r.measured is None else f"{r.measured:.4g}"
        lines.append(f"{r.status:6} {r.metric:42} {r.concurrency:>5} {meas:>12} {r.op:2} {r.target:>10.4g} "
                     f"{r.unit}  {r.source}")
    return "\n".join(lines)


def _measured_from_files(paths: Sequence[str]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    from .loadgen import parse_genai_perf_json

    flat: dict[str, Any] = {}
    by_conc: dict[int, dict[str, Any]] = {}
    for p in paths:
        with open(p) as fh:
            doc = json.load(fh)
        if isinstance(doc, dict) and ("time_to_first_token" in doc or "request_throughput" in doc):
            res = parse_genai_perf_json(p)
            if isinstance(res.get("concurrency"), int):
                by_conc.setdefault(res["concurrency"], {}).update(res)
            else:
                flat.update(res)
        elif isinstance(doc, dict):
            flat.update(doc)
        else:
            raise TargetError(f"{p}: expected a JSON object")
    return flat, by_conc


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m llm_client.targets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="schema-check targets files")
    v.add_argument("paths", nargs="*")
    c = sub.add_parser("check", help="evaluate measured results against a targets file")
    c.add_argument("targets")
    c.add_argument("results", nargs="+")
    c.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "validate":
        if args.paths:
            for p in args.paths:
                load_targets(p)
        else:
            load_all()
        print("ok")
        return 0
    ts = load_targets(args.targets)
    flat, by_conc = _measured_from_files(args.results)
    rows = evaluate(ts, flat, by_conc)
    print(json.dumps([r.as_dict() for r in rows], indent=2) if args.json else format_rows(rows))
    return 0 if all_passed(rows) else 1

if __name__ == "__main__":
    raise SystemExit(_main())
