"""Locate the load generators from ``scripts/setup_loadgen.sh``, build their command lines, parse their output.

Tools (each in its own virtual environment under ``.venv-loadgen/``, because their pins conflict):

* ``perf_analyzer`` from ``tritonclient==2.51.0`` (``.venv-loadgen/pa``). The binary needs ``libb64.so.0d`` and
  ``libcudart.so.12``; the setup script links them into ``.venv-loadgen/pa/lib``, which goes on ``LD_LIBRARY_PATH``.
* ``genai-perf`` 0.0.16 (``.venv-loadgen/genai``), numpy 2; it runs ``perf_analyzer`` underneath, found on ``PATH``.
* ``aiperf`` (optional, ``.venv-loadgen/aiperf`` with ``WITH_AIPERF=1``).

Every ``*_cmd`` function returns ``(argv, env)`` ready for ``subprocess.run(argv, env=env)``. The parsers turn the
tools' files into plain dicts whose keys match the metric names in ``client/targets/*.yaml`` (see ``targets.py``).

Metric names shared with the targets (units in the name):
``ttft_{avg,p50,p90,p95,p99}_ms``, ``itl_*_ms``, ``request_latency_*_ms``, ``output_token_throughput_tok_s``,
``request_throughput_req_s``, ``output_token_throughput_per_user_*_tok_s``, ``input_sequence_length_avg``,
``output_sequence_length_avg``, ``request_count``.
"""

from __future__ import annotations

from llm_client.loadgen.commands import aiperf_cmd, genai_perf_cmd, make_perf_inputs, perf_analyzer_cmd, run_genai_perf
from llm_client.loadgen.parsers import (
    find_aiperf_json,
    find_genai_perf_json,
    parse_aiperf_json,
    parse_genai_perf_json,
    parse_perf_analyzer_csv,
    parse_perf_analyzer_profile_export,
    perf_analyzer_metrics,
)
from llm_client.loadgen.sweeps import expand_sweep, load_sweeps
from llm_client.loadgen.tools import LoadgenTools, find_tools, make_smollm2_tokenizer_dir

__all__ = [
    "LoadgenTools",
    "find_tools",
    "perf_analyzer_cmd",
    "genai_perf_cmd",
    "aiperf_cmd",
    "parse_perf_analyzer_csv",
    "perf_analyzer_metrics",
    "parse_perf_analyzer_profile_export",
    "parse_genai_perf_json",
    "find_genai_perf_json",
    "parse_aiperf_json",
    "find_aiperf_json",
    "make_perf_inputs",
    "load_sweeps",
    "expand_sweep",
    "make_smollm2_tokenizer_dir",
    "run_genai_perf",
]
