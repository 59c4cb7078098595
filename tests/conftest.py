"""Shared fixtures: the embedded checkpoint, an engine on it, and the real tritonserver on model_repository/."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from llmserve.launch.tritonserver import TritonServer

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "model_repository" / "llm"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    # The kernel tests run under Triton's CPU interpreter, which takes effect only for kernels defined after this
    # is set: before any test module imports llmserve.kernels (serving on the CPU never takes the Triton path)
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Cache blocks small enough that short test prompts cross several; on a GPU the attention kernels read whole blocks
# of 16 tokens or more (a smaller kv_block_size is refused there)
SMALL_BLOCK = 16 if torch.cuda.is_available() else 4


@pytest.fixture(params=["plain", "pdl"] if torch.cuda.is_available() else ["plain"])
def pdl(request) -> bool:
    """On a GPU the linear and fused kernels (and the model) are tested twice: plain launches, and programmatic
    dependent launch where the GPU has it (what the engine's small decode graphs use on a Hopper GPU)."""
    from llmserve.engine.model_runner import use_pdl

    if request.param == "pdl" and not use_pdl("auto", torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    return request.param == "pdl"


@pytest.fixture(scope="module")
def tools() -> dict[str, str | None]:
    """The deployment checks' tools (tests/deploy_tools.py), installed once where missing."""
    from tests.deploy_tools import find_tools

    return find_tools()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_triton(repo: Path, log_path: Path, timeout: float = 300.0, **kw) -> TritonServer:
    """A TritonServer on free ports, started. free_port() probes a port and lets it go: the other xdist worker's
    server can bind it first, and tritonserver then exits at start with "already in use"; such a start is retried on
    fresh ports (twice at most), any other failure raised."""
    from llmserve.launch.tritonserver import ServerError, TritonServer

    for attempt in range(3):
        seen = log_path.stat().st_size if log_path.is_file() else 0
        srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=log_path, **kw)
        try:
            return srv.start(timeout=timeout)
        except ServerError as exc:  # a port taken before start()'s probe, or after it (the server's log says)
            srv.stop()
            log = log_path.read_bytes()[seen:].decode(errors="replace") if log_path.is_file() else ""
            if attempt == 2 or "already in use" not in str(exc) + log:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    from build_engines.importer import embedded_gguf, import_checkpoint

    return import_checkpoint(embedded_gguf(), MODEL_DIR / "checkpoint")


def write_tiny_llama(out: Path, num_key_value_heads: int = 2, std: float = 0.15) -> Path:
    """A random 2-layer HF Llama checkpoint (transformers, CPU) with a byte-level tokenizer.json (ids 0..255 =
    the bytes), so code that tokenizes text (AWQ's calibration) runs on it too."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=num_key_value_heads, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF's init (std 0.02) leaves logits nearly flat; spread them so errors show
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    model.save_pretrained(out)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(out / "tokenizer.json"))
    return out


def prefill_logits(ckpt: Path, ids: list[int]):
    """(logits of every position of one float32 CPU prefill of `ids`, the model) for a checkpoint folder."""
    import torch

    from llmserve.model.llama import load_model

    model = load_model(ckpt, torch.float32, torch.device("cpu"))
    return model_logits(model, ids), model


def model_logits(model, ids: list[int]):
    """The logits of every position of one float32 CPU prefill of `ids` through a loaded model."""
    import torch

    from llmserve.model.attention import AttentionMetadata

    model.init_rope(64, torch.device("cpu"))
    a = model.args
    meta = AttentionMetadata.for_prefill([len(ids)], 4, torch.device("cpu"))
    cache = torch.zeros(a.num_layers, 2, -(-len(ids) // 4), 4, a.num_kv_heads, a.head_dim)
    with torch.inference_mode():
        return model(torch.tensor(ids), torch.arange(len(ids)), cache, meta, None)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory) -> Path:
    """Grouped-query attention (4 heads, 2 KV heads), as most served models."""
    return write_tiny_llama(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def tiny_hf_checkpoint_mha(tmp_path_factory) -> Path:
    """As many KV heads as heads: AWQ then also scales o_proj (folded into v_proj)."""
    return write_tiny_llama(tmp_path_factory.mktemp("hf_mha"), num_key_value_heads=4)


@pytest.fixture(scope="session")
def tokenizer(checkpoint):
    from llmserve.serving.tokenizer import Tokenizer

    return Tokenizer(checkpoint)


@pytest.fixture(scope="session")
def chat_ids(tokenizer):
    return tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])


@pytest.fixture(scope="session")
def server(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    srv = start_triton(ROOT / "model_repository", log, timeout=300)
    yield srv
    srv.stop()
