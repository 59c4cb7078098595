"""Builds the service for a model directory from its ServingConfig: the one place that picks the engine."""

from __future__ import annotations

from pathlib import Path

from llmserve.config import ConfigError, ServingConfig, resolve_inside, switch
from llmserve.serving.engine_process import ServiceProcess
from llmserve.serving.metrics import MetricsSink
from llmserve.serving.service import LLMService
from llmserve.serving.tokenizer import Tokenizer


def build_service(cfg: ServingConfig, model_dir: str | Path, metrics: MetricsSink | None = None,
                  share_key: str | None = None) -> LLMService | ServiceProcess:
    """`share_key`: callers with the same key share one engine process (where `engine_process` is on); the
    Triton adapter passes one per tritonserver, model version, config and device, so a model's instances on
    one GPU serve from one engine."""
    checkpoint = resolve_inside(model_dir, cfg.checkpoint_dir, "checkpoint_dir")
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"checkpoint_dir: {checkpoint} holds no HF checkpoint (config.json); import one with "
                          "`python -m build_engines import --output <model_dir>/checkpoint`")
    if use_engine_process(cfg):
        return ServiceProcess(cfg, model_dir, checkpoint, metrics, share_key)
    tokenizer = Tokenizer(checkpoint)
    if cfg.engine == "tensorrtllm":
        from llmserve.engine.trtllm import create_trtllm_engine

        engine = create_trtllm_engine(cfg, resolve_inside(model_dir, cfg.engine_dir, "engine_dir"))
    elif cfg.engine == "synthetic":
        from llmserve.engine.synthetic import SyntheticEngine

        engine = SyntheticEngine(tokenizer.backend.get_vocab_size(), cfg.max_model_len or 8192, cfg.max_batch_size,
                                 cfg.synthetic_step_ms, cfg.max_queue_size)
    else:
        from llmserve.engine.torch_engine import TorchEngine

        engine = TorchEngine(cfg, checkpoint)
    return LLMService(engine, tokenizer, metrics, max_prompt_chars=cfg.max_input_bytes).start()


def use_engine_process(cfg: ServingConfig) -> bool:
    """`engine_process` auto: a child process for our engine on a GPU, where its eager launches would hold the
    caller's GIL (on a CPU the engine's own compute dominates and one process is simpler)."""
    def auto() -> bool:
        if cfg.engine != "pytorch" or cfg.device == "cpu":
            return False
        if cfg.device.startswith("cuda"):
            return True
        import torch

        return torch.cuda.is_available()

    return switch(cfg.engine_process, auto)
