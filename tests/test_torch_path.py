"""The torch path (kernel mode "off": where CPU wheels of torch lack triton) runs steps of one row and of several
without importing the Triton kernels' modules: the layers ask the kernels' switches only where kernels run."""

import json
import sys

import pytest
import torch

import llmserve.kernels
from llmserve.model.attention import AttentionMetadata
from llmserve.model.llama import load_model

KERNEL_MODULES = ("linear", "fused", "gemv", "attention", "varlen", "fp8_mm")


@pytest.mark.parametrize("quant", [None, "fp8", "int8_wo"])
def test_the_torch_path_imports_no_kernel_module(tmp_path, monkeypatch, quant):
    cfg = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
           "llmserve_random_init": {"seed": 0, "std": 0.1}, **({"quantization": {"mode": quant}} if quant else {})}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = load_model(tmp_path, torch.float32, torch.device("cpu"), "off")
    model.init_rope(64, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    for name in KERNEL_MODULES:
        monkeypatch.setitem(sys.modules, f"llmserve.kernels.{name}", None)
        monkeypatch.delattr(llmserve.kernels, name, raising=False)
    with pytest.raises(ImportError):
        from llmserve.kernels import linear  # noqa: F401
    for lens in ([1], [3, 2]):
        meta = AttentionMetadata.for_prefill(lens, 16, torch.device("cpu"), work_list=False)
        meta.slot_mapping, meta.block_tables = meta.slot_mapping.long(), meta.block_tables.long()
        cache = torch.zeros(2, 2, 4, 16, 2, 16)
        ids = torch.arange(sum(lens)) % 100
        pos = torch.cat([torch.arange(n) for n in lens])
        with torch.inference_mode():
            assert torch.isfinite(model(ids, pos, cache, meta, None)).all()
