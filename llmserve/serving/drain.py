"""Graceful shutdown: drain the model before tritonserver stops.

tritonserver 2.51 closes its endpoints on SIGINT/SIGTERM and only then waits for decoupled requests; the
model's finalize() runs after that, so a request in flight can no longer reach its client with an error.
The fix is to drain first: whoever stops the server (our launcher, `python -m llmserve.launch drain` in a
Kubernetes preStop hook) writes a drain file into a control folder; each model instance notices it within a
housekeeping period, refuses new requests with UNAVAILABLE, gives running ones a grace period, ends the rest
with a final UNAVAILABLE error, and marks itself drained. Then the server may go.

The control folder is named by the environment variable LLMSERVE_CONTROL_DIR, which tritonserver passes on
to the Python backend stubs. Files, not signals: the stub's main thread belongs to Triton, and a file works
the same from a launcher, a preStop hook or a shell.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

CONTROL_ENV = "LLMSERVE_CONTROL_DIR"
_DRAIN = "drain"


def control_dir() -> Path | None:
    value = os.environ.get(CONTROL_ENV)
    return Path(value) if value else None


def request_drain(directory: str | Path, grace_s: float) -> None:
    """Asks every model instance serving from `directory` to drain, letting running requests go on for
    `grace_s` seconds before they end with an error."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{_DRAIN}.{os.getpid()}"
    tmp.write_text(f"{max(0.0, float(grace_s))}\n")
    tmp.replace(directory / _DRAIN)  # atomic: an instance never reads half a number


def wait_drained(directory: str | Path, timeout: float, interval: float = 0.05) -> bool:
    """True once every registered instance has drained (or none is registered); False on timeout."""
    directory = Path(directory)
    deadline = time.monotonic() + timeout
    while True:
        serving = {p.stem for p in directory.glob("*.serving")}
        drained = {p.stem for p in directory.glob("*.drained")}
        if serving <= drained:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class DrainWatch:
    """A model instance's side: register, notice a drain request, report drained."""

    def __init__(self, directory: str | Path | None, instance: str):
        self.directory = Path(directory) if directory else None
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "_", instance) + f"-{os.getpid()}"
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / f"{self.name}.drained").unlink(missing_ok=True)
            (self.directory / f"{self.name}.serving").touch()

    def requested(self) -> float | None:
        """The grace period in seconds once a drain was asked for, else None. One stat() per call."""
        if self.directory is None:
            return None
        try:
            text = (self.directory / _DRAIN).read_text()
        except FileNotFoundError:
            return None
        try:
            return max(0.0, float(text.strip() or 0))
        except ValueError:
            return 0.0

    def mark_drained(self) -> None:
        if self.directory is not None:
            (self.directory / f"{self.name}.drained").touch()

    def close(self) -> None:
        """The instance is gone (unloaded): nothing is left to wait for."""
        if self.directory is not None:
            (self.directory / f"{self.name}.serving").unlink(missing_ok=True)
            (self.directory / f"{self.name}.drained").unlink(missing_ok=True)
