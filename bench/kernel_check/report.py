"""What one run of kernel_check measured, and the decorator that makes a function a section of it."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Report:
    """Results by section (written to OUT/kernel_check.json after each section and as sections go) and the lines
    printed at the end (the device tool returns only the tail of the output)."""

    out: Path
    results: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        """A line for the summary printed at the end."""
        self.summary.append(line)

    def save(self) -> None:
        (self.out / "kernel_check.json").write_text(json.dumps(self.results, indent=1, default=str))


def section(name: str) -> Callable:
    """Runs the section, records "ok Ns" or its failure under results["sections"], and saves: one device call
    asks many questions, so a section that fails must not stop the rest."""
    def wrap(fn):
        def run(args):
            report: Report = args.report
            t0 = time.time()
            print(f"== {name}", flush=True)
            try:
                fn(args)
                report.results.setdefault("sections", {})[name] = f"ok {time.time() - t0:.0f}s"
            except Exception as exc:  # noqa: BLE001 - keep going: one device call, many questions
                traceback.print_exc()
                report.results.setdefault("sections", {})[name] = f"FAILED {type(exc).__name__}: {exc}"[:400]
            torch.cuda.empty_cache()
            report.save()
        return run
    return wrap
