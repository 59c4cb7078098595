"""Builds the service for a model directory from its ServingConfig: the one place that picks the engine."""

from __future__ import annotations

import os
from pathlib import Path

from llmserve.config import ConfigError, ServingConfig, resolve_inside, switch
from llmserve.engine.api import Engine
from llmserve.engine.synthetic import SyntheticEngine
from llmserve.engine.trtllm import create_trtllm_engine
from llmserve.serving.api import Service
from llmserve.serving.bridge.client import ServiceProcess
from llmserve.serving.metrics import MetricsSink
from llmserve.serving.observer import TRACE_ENV, request_observer
from llmserve.serving.response_cache import CachingService, ResponseStore, cache_identity
from llmserve.serving.service import LLMService
from llmserve.serving.tokenizer import Tokenizer


def build_service(cfg: ServingConfig, model_dir: str | Path, metrics: MetricsSink | None = None,
                  share_key: str | None = None) -> Service:
    """`share_key`: callers with the same key share one engine process (where `engine_process` is on); the
    Triton adapter passes one per tritonserver, model version, config and device, so a model's instances on
    one GPU serve from one engine."""
    checkpoint = _checkpoint(cfg, model_dir)
    if use_engine_process(cfg):
        service: Service = ServiceProcess(cfg, model_dir, checkpoint, metrics, share_key,
                                          tracing=bool(_trace_path()))
    else:
        service = _in_process(cfg, model_dir, checkpoint, metrics)
    return _with_response_cache(cfg, model_dir, checkpoint, service, metrics)


def _with_response_cache(cfg: ServingConfig, model_dir: str | Path, checkpoint: Path, service: Service,
                         metrics: MetricsSink | None) -> Service:
    """The response cache in front, where it is on: in the caller's process (the Triton stub), so a hit never
    crosses to an engine process."""
    front = cfg.front
    if front.response_cache_max_entries == 0:
        return service
    dirs = [checkpoint]
    if cfg.engine == "tensorrtllm":
        dirs.append(resolve_inside(model_dir, cfg.trtllm.engine_dir, "engine_dir"))
    store = ResponseStore(front.response_cache_max_entries, front.response_cache_max_bytes, front.response_cache_ttl_s)
    return CachingService(service, store, cache_identity(cfg, dirs), metrics, front.max_input_bytes)


def build_in_process(cfg: ServingConfig, model_dir: str | Path, metrics: MetricsSink | None = None) -> LLMService:
    """The service with its engine in this process, whatever `engine_process` says: what an engine process runs."""
    return _in_process(cfg, model_dir, _checkpoint(cfg, model_dir), metrics)


def _checkpoint(cfg: ServingConfig, model_dir: str | Path) -> Path:
    checkpoint = resolve_inside(model_dir, cfg.checkpoint_dir, "checkpoint_dir")
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"checkpoint_dir: {checkpoint} holds no HF checkpoint (config.json); import one with "
                          "`python -m build_engines import --output <model_dir>/checkpoint`")
    return checkpoint


def _trace_path() -> str | None:
    """The diagnostics trace file (bench): the environment is read here, once per service built."""
    return os.environ.get(TRACE_ENV) or None


def _in_process(cfg: ServingConfig, model_dir: str | Path, checkpoint: Path,
                metrics: MetricsSink | None) -> LLMService:
    tokenizer = Tokenizer(checkpoint)
    trace = _trace_path()
    engine = _engine(cfg, model_dir, checkpoint, tokenizer, trace)
    return LLMService(engine, tokenizer, metrics, max_prompt_chars=cfg.front.max_input_bytes,
                      observer=request_observer(trace)).start()


def _engine(cfg: ServingConfig, model_dir: str | Path, checkpoint: Path, tokenizer: Tokenizer,
            trace: str | None) -> Engine:
    if cfg.engine == "tensorrtllm":
        return create_trtllm_engine(cfg, resolve_inside(model_dir, cfg.trtllm.engine_dir, "engine_dir"))
    if cfg.engine == "synthetic":
        b = cfg.batching
        return SyntheticEngine(tokenizer.backend.get_vocab_size(), cfg.max_model_len or 8192, b.max_batch_size,
                               cfg.synthetic_step_ms, b.max_queue_size)
    # torch: a process that forwards to an engine process, or runs another engine, never loads it
    from llmserve.engine.observer import step_observer
    from llmserve.engine.torch_engine import TorchEngine

    return TorchEngine(cfg, checkpoint, observer=step_observer(trace))


def use_engine_process(cfg: ServingConfig) -> bool:
    """`engine_process` auto: a child process for our engine on a GPU, where its eager launches would hold the
    caller's GIL (on a CPU the engine's own compute dominates and one process is simpler)."""
    def auto() -> bool:
        if cfg.engine != "pytorch" or cfg.device == "cpu":
            return False
        if cfg.device.startswith("cuda"):
            return True
        import torch  # heavy: only asked for where the device is left to torch to find

        return torch.cuda.is_available()

    return switch(cfg.front.engine_process, auto)
