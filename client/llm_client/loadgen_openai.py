"""genai-perf in chat mode against the OpenAI-compatible front (`python -m llm_client.openai_server`).

genai-perf's OpenAI service kind posts to ``/v1/chat/completions`` and reads server-sent events, the way any OpenAI
client does, so this measures the whole path a user of the front sees (HTTP + SSE, the front, gRPC, Triton).
Run it with ``run_genai_perf`` and read the report with ``find_genai_perf_json`` + ``parse_genai_perf_json``,
as for the Triton-direct command in ``llm_client.loadgen``.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_client.loadgen import LoadgenTools, find_tools


def chat_cmd(model: str, url: str, tokenizer_dir: str | os.PathLike[str], concurrency: int, request_count: int,
             input_tokens_mean: int, output_tokens_mean: int, artifact_dir: str | os.PathLike[str],
             streaming: bool = True, *, random_seed: int = 0,
             tools: LoadgenTools | None = None) -> tuple[list[str], dict[str, str]]:
    """``genai-perf profile --endpoint-type chat`` against the front at ``url`` (``http://host:port``).

    Each request asks for ``output_tokens_mean`` tokens (``max_tokens``) and, through ``--extra-inputs``,
    ``min_tokens`` and ``ignore_eos`` of the same size (the front forwards these vLLM extras), so answers have
    exactly that length and the token throughput is comparable from run to run.
    """
    tools = tools or find_tools()
    n = str(int(output_tokens_mean))
    argv = [str(tools.require("genai_perf")), "profile", "-m", model, "--endpoint-type", "chat",
            "-u", url.rstrip("/"), "--tokenizer", str(tokenizer_dir),
            "--num-dataset-entries", str(max(int(request_count), 1)),
            "--synthetic-input-tokens-mean", str(int(input_tokens_mean)), "--synthetic-input-tokens-stddev", "0",
            "--output-tokens-mean", n, "--output-tokens-stddev", "0",
            "--extra-inputs", f"min_tokens:{n}", "--extra-inputs", "ignore_eos:true",
            "--random-seed", str(int(random_seed)), "--concurrency", str(int(concurrency)),
            "--request-count", str(int(request_count)), "--warmup-request-count", "0",
            "--artifact-dir", str(Path(artifact_dir))]
    if streaming:
        argv.append("--streaming")
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    # genai-perf starts `perf_analyzer` from PATH: setup_loadgen.sh links the 2.51 binary into genai/bin.
    env["PATH"] = os.pathsep.join([str(tools.genai_perf.parent), env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(tools.perf_analyzer_lib), env.get("LD_LIBRARY_PATH", "")])
    return argv, env
