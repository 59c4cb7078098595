"""bench/host_step.py runs the real engine's host path against a stub model: it broke once unseen when the model's
interface grew (decode_layers, logits, launch), so it is run here at a small size."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_host_step_gives_every_sequence_a_token_a_step_and_times_each_phase():
    cmd = [sys.executable, "-m", "bench.host_step", "--sizes", "8,32", "--steps", "4", "--warmup", "2", "--json",
           "--profile-size", "0", "--max-model-len", "512", "--max-num-tokens", "512"]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout
    results = json.loads(out)["results"]
    assert [r["size"] for r in results] == [8, 32]
    for r in results:
        assert r["tokens_per_step"] == r["size"]  # measure() asserts it too: one new token a sequence a step
        assert r["ms_per_step"]["total"] > 0 and r["ms_per_step"]["schedule"] > 0
