"""Sweeps from `client/sweeps.yaml`: each named sweep expanded into one run spec per point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_client.loadgen.tools import repo_root


def load_sweeps(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read ``client/configs/sweeps.yaml`` (or ``path``)."""
    import yaml

    path = Path(path) if path else repo_root() / "client" / "configs" / "sweeps.yaml"
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("sweeps"), dict):
        raise ValueError(f"{path}: expected a mapping with 'sweeps'")
    return doc


def expand_sweep(doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """One run spec per point of sweep ``name``: keys of ``genai_perf_cmd`` (``concurrency`` or ``request_rate``,
    ``input_tokens_mean``, ``output_tokens_mean``, ``num_prompts``, ...) plus ``run_name``."""
    if name not in doc["sweeps"]:
        raise KeyError(f"unknown sweep {name!r}; have {sorted(doc['sweeps'])}")
    defaults = dict(doc.get("defaults") or {})
    sweep = dict(doc["sweeps"][name])
    mixes = sweep.pop("mixes", None) or [{"input_tokens": sweep.pop("input_tokens", defaults.get("input_tokens", 128)),
                                          "output_tokens": sweep.pop("output_tokens",
                                                                     defaults.get("output_tokens", 128))}]
    conc = sweep.pop("concurrency", None)
    rates = sweep.pop("request_rate", None)
    if (conc is None) == (rates is None):
        raise ValueError(f"sweep {name!r}: give exactly one of concurrency / request_rate")
    loads = [("concurrency", c) for c in _as_list(conc)] if conc is not None else [
        ("request_rate", r) for r in _as_list(rates)]
    sweep.pop("description", None)
    common = {k: v for k, v in {**defaults, **sweep}.items() if k not in ("input_tokens", "output_tokens")}
    runs = []
    for mix in mixes:
        for kind, value in loads:
            spec = dict(common)
            spec["input_tokens_mean"] = int(mix["input_tokens"])
            spec["output_tokens_mean"] = int(mix["output_tokens"])
            spec["concurrency"] = int(value) if kind == "concurrency" else None
            spec["request_rate"] = float(value) if kind == "request_rate" else None
            spec["run_name"] = f"{name}-in{mix['input_tokens']}-out{mix['output_tokens']}-{kind}{value:g}"
            runs.append(spec)
    return runs


def _as_list(v: Any) -> list[float]:
    return [float(x) if isinstance(x, float) else int(x) for x in (v if isinstance(v, list) else [v])]
