"""GGUF kept quantized (build_engines/gguf_native.py): Q4_0/Q4_1 blocks repacked bit-exactly into the int4
group format (the K-quants and Q8_0: tests/test_gguf_kquants.py), unsupported types refused by name, and the
embedded SmolLM2 (Q4_1) served from its own 4-bit weights giving the dequantized import's greedy tokens (torch
path, CPU)."""

import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf import quants as ggml

from build_engines import importer
from build_engines.__main__ import main as cli_main
from build_engines.gguf_blocks import decode
from build_engines.gguf_native import Reader, _unpermute_rows, keep_quantized, store
from build_engines.importer import ImportError_, import_checkpoint
from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from llmserve.model.int4 import Int4AsymLinear, dequantize_int4


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1])
def test_repack_dequantizes_exactly_like_ggml(qtype):
    rng = np.random.default_rng(int(qtype))
    w = (rng.standard_normal((6, 160)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    blocks = ggml.quantize(w, qtype)
    _, [t] = store([decode(blocks, qtype)])
    assert t["weight"].shape == (6, 80) and t["weight_scale"].shape == (6, 5)
    codes = blocks.reshape(6, 5, -1)[:, :, -16:].reshape(6, 80)  # the file's code bytes are already our layout
    assert torch.equal(t["weight"], torch.from_numpy(np.ascontiguousarray(codes)))
    assert ("weight_min" in t) == (qtype == T.Q4_1)
    ours = dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"))
    assert torch.equal(ours, torch.from_numpy(ggml.dequantize(blocks, qtype)))


def test_row_order_is_transformers_reverse_permutation():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    for heads in (2, 3, 6):
        ref = LlamaTensorProcessor()._reverse_permute_weights(w, heads, heads)
        assert np.array_equal(w[_unpermute_rows(24, heads).numpy()], ref)


def _gguf(path, types, arch="llama"):
    writer = GGUFWriter(str(path), arch)
    rng = np.random.default_rng(0)
    for name, qtype in types.items():
        if qtype == T.Q4_K:  # gguf's numpy quantizer has no K-quants: one zero super-block of 256 per row
            blocks = np.zeros((8, 144), np.uint8)
        else:
            blocks = ggml.quantize(rng.standard_normal((8, 64)).astype(np.float32), qtype)
        writer.add_tensor(name, blocks, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_fast_reader_parses_what_gguf_py_parses(tmp_path):
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_token_list(["<s>", "a", "Grüße", ""] * 50)
    writer.add_token_scores([0.5, -1.0] * 100)
    writer.add_name("tiny")
    writer.add_block_count(2)
    writer.add_tensor("blk.0.attn_q.weight", ggml.quantize(np.ones((8, 64), np.float32), T.Q8_0), raw_dtype=T.Q8_0)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    want, got = GGUFReader(path), Reader(path)
    assert list(got.fields) == list(want.fields) and len(want.fields) > 5
    for name, f in want.fields.items():
        g = got.fields[name]
        assert (g.offset, g.types, g.data) == (f.offset, f.types, f.data), name
        assert len(g.parts) == len(f.parts) and all(np.array_equal(a, b) for a, b in zip(g.parts, f.parts)), name
    assert [(t.name, t.tensor_type, t.data_offset) for t in got.tensors] == [
        (t.name, t.tensor_type, t.data_offset) for t in want.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(got.tensors, want.tensors))


@pytest.mark.parametrize("types,arch,message", [
    ({"blk.0.attn_q.weight": T.Q4_1, "blk.0.ffn_down.weight": T.F16}, "llama",
     r"tensor type F16 \(e.g. blk.0.ffn_down.weight\) is not kept quantized.*--dequantize"),
    ({"blk.0.attn_q.weight": T.Q4_0}, "gpt2", r"general.architecture 'gpt2'"),
])
def test_native_import_refuses_what_it_cannot_keep_before_any_work(tmp_path, monkeypatch, types, arch, message):
    monkeypatch.setattr(importer, "_import_gguf", lambda *a: pytest.fail("imported before checking"))
    src = _gguf(tmp_path / "m.gguf", {"token_embd.weight": T.Q8_0, **types}, arch)  # embeddings: any type
    with pytest.raises(ImportError_, match=message):
        import_checkpoint(src, tmp_path / "out", dequantize=False)


def test_cli_keeps_4_bit_unless_told_and_the_cache_knows_which(tmp_path, monkeypatch):
    src = _gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": T.Q4_1})
    calls = []

    def fake_import(s, out):
        calls.append("dequantize")
        (out / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))

    monkeypatch.setattr(importer, "_import_gguf", fake_import)
    monkeypatch.setattr(importer, "_keep_quantized", lambda s, out, reader: calls.append("keep"))
    assert cli_main(["import", str(src), "--output", str(tmp_path / "o")]) == 0
    assert calls == ["dequantize", "keep"]
    assert cli_main(["import", str(src), "--output", str(tmp_path / "o")]) == 0 and len(calls) == 2  # cached
    assert cli_main(["import", str(src), "--output", str(tmp_path / "o"), "--dequantize"]) == 0
    assert calls[2:] == ["dequantize"]  # the cached native import is not taken for a dequantized one
    manifest = json.loads((tmp_path / "o" / "import_manifest.json").read_text())
    assert manifest["gguf_weights"] == "dequantized"


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def native(checkpoint, tmp_path_factory):
    """The embedded SmolLM2 kept in 4 bits: the dequantized import (cached by conftest) with its decoder
    linears replaced by the GGUF file's own Q4_1 blocks (keep_quantized checks each against it)."""
    out = tmp_path_factory.mktemp("native")
    for f in checkpoint.iterdir():
        shutil.copy2(f, out / f.name)
    entry = keep_quantized(importer.embedded_gguf(), out)
    assert entry == {"mode": "int4_asym", "group_size": 32, "keep_attention_fp16": False, "weight_scale": "per_group",
                     "activation_scale": "none", "quantized_tensors": 210, "source": "gguf:Q4_1"}
    return out


def _greedy(ckpt, tokenizer):
    engine = TorchEngine(ServingConfig.of(device="cpu", dtype="float32"), ckpt)
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}])
        engine.add_request(EngineRequest(str(i), ids, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)))
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out, engine.runner.model


def test_embedded_smollm2_from_its_4_bit_weights_gives_the_dequantized_greedy_tokens(checkpoint, native, tokenizer):
    """float32 here (bfloat16 gave equal tokens too, but takes two minutes on two CPU cores). The served layers
    are 4-bit, and dequantize bit for bit to the dequantized import's weights."""
    assert (native / "model.safetensors").stat().st_size < 0.4 * (checkpoint / "model.safetensors").stat().st_size
    (got, ours), (ref, theirs) = _greedy(native, tokenizer), _greedy(checkpoint, tokenizer)
    assert got == ref and all(len(v) == 5 for v in got.values())
    for a, b in zip(ours.layers, theirs.layers):
        for mine, other in ((a.self_attn.qkv_proj, b.self_attn.qkv_proj), (a.self_attn.o_proj, b.self_attn.o_proj),
                            (a.mlp.gate_up_proj, b.mlp.gate_up_proj), (a.mlp.down_proj, b.mlp.down_proj)):
            assert isinstance(mine, Int4AsymLinear) and mine.group_size == 32
            assert torch.equal(mine.dequantized(), other.weight)
