"""Shared fixtures: the embedded checkpoint, an engine on it, and the real tritonserver on model_repository/."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "model_repository" / "llm"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    from build_engines.importer import embedded_gguf, import_checkpoint

    return import_checkpoint(embedded_gguf(), MODEL_DIR / "checkpoint")


@pytest.fixture(scope="session")
def tokenizer(checkpoint):
    from llmserve.serving.tokenizer import Tokenizer

    return Tokenizer(checkpoint)


@pytest.fixture(scope="session")
def chat_ids(tokenizer):
    return tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])


@pytest.fixture(scope="session")
def server(checkpoint, tmp_path_factory):
    from llmserve.launch.tritonserver import TritonServer

    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    srv = TritonServer(ROOT / "model_repository", free_port(), free_port(), free_port(), log_path=log)
    srv.start(timeout=300)
    yield srv
    srv.stop()
