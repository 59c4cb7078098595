"""GGUF K-quants and Q8_0 kept quantized (build_engines/gguf_blocks.py, gguf_native.py): random blocks of each
type repack bit for bit like gguf-py's dequantize, mixed types in one packed module widen exactly, unsupported
types are refused by name, and a tiny Q4_K_M-like llama served from its repacked weights (CPU, torch path)
gives the dequantized import's logits exactly."""

import json

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf import quants as ggml
from safetensors.torch import load_file, save_file

from build_engines.gguf_blocks import decode
from build_engines.gguf_native import NativeImportError, Reader, dequantized, keep_quantized, store
from build_engines.importer import ImportError_, import_checkpoint
from llmserve.model.int4 import Int4AsymLinear
from llmserve.model.int8_group import Int8GroupAsymLinear, Int8GroupSymLinear
from llmserve.model.llama import load_model
from tests.conftest import prefill_logits

NATIVE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K]
# Where each type keeps its float16 fields (d, and dmin / m), and how large d may be: any other bytes are valid.
F16_FIELDS = {T.Q4_0: (0, 1), T.Q4_1: (0, 2), T.Q5_0: (0, 1), T.Q5_1: (0, 2), T.Q8_0: (0, 1), T.IQ4_NL: (0, 1),
              T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208, 1)}
D_MAX = {T.Q4_0: 0.02, T.Q4_1: 0.02, T.Q8_0: 2e-3, T.Q4_K: 2e-4, T.Q5_K: 1e-4, T.Q6_K: 5e-5}


def random_blocks(qtype: T, rows: int, cols: int, rng: np.random.Generator, d_max: float = 2.0) -> np.ndarray:
    """Raw rows of `qtype` with random bytes and finite random float16 d (and dmin / m)."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    at, count = F16_FIELDS[qtype]
    raw[..., at:at + 2 * count] = rng.uniform(-d_max, d_max, (rows, cols // block, count)).astype(
        np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def bits(t) -> np.ndarray:
    return np.asarray(t, dtype=np.float32).view(np.int32)


@pytest.mark.parametrize("qtype", NATIVE)
def test_each_type_repacks_bit_for_bit_like_ggml(qtype):
    raw = random_blocks(qtype, 6, 512, np.random.default_rng(int(qtype)))
    mode, [t] = store([decode(raw, qtype)])
    assert mode == {T.Q4_0: "int4_sym", T.Q4_1: "int4_asym", T.Q4_K: "int4_asym"}.get(qtype, mode)
    assert t["weight"].dtype == (torch.uint8 if mode.startswith("int4") else torch.int8)
    assert np.array_equal(bits(dequantized(mode, t, torch.float32)), bits(ggml.dequantize(raw, qtype)))


def test_q4_k_scales_need_float32():
    """d * sc rounded to float16 (the format's old scale type) changes weights: hence float32 scales."""
    raw = random_blocks(T.Q4_K, 6, 512, np.random.default_rng(1))
    mode, [t] = store([decode(raw, T.Q4_K)])
    assert t["weight_scale"].dtype == torch.float32
    t16 = {k: v.half() if v.is_floating_point() else v for k, v in t.items()}
    assert not torch.equal(dequantized(mode, t16, torch.float32), torch.from_numpy(ggml.dequantize(raw, T.Q4_K)))


@pytest.mark.parametrize("types,mode", [
    ((T.Q4_K, T.Q4_K, T.Q6_K), "int8_group_asym"),  # Q4_K_M's q, k, v: v's groups of 16, a -0.0 minimum
    ((T.Q4_K, T.Q5_K), "int8_group_asym"),
    ((T.Q8_0, T.Q6_K), "int8_group_sym"),
    ((T.Q4_0, T.Q4_1), "int8_group_asym"),  # s * (q - 8) is not s * q + m with m = -8 s, rounded
    ((T.Q4_1, T.Q4_K), "int4_asym"),  # Q4_1's float16 scales widen to float32
    ((T.Q4_0, T.Q4_0), "int4_sym"),
    ((T.Q5_0, T.Q5_1, T.IQ4_NL), "int8_group_asym"),  # llama.cpp's fallbacks for rows not a multiple of 256
])
def test_mixed_parts_of_one_module_take_a_format_holding_each_exactly(types, mode):
    rng = np.random.default_rng(len(types))
    raws = [random_blocks(q, 4, 256, rng) for q in types]
    got, tensors = store([decode(r, q) for r, q in zip(raws, types)])
    assert got == mode and tensors[0]["weight_scale"].shape[1] == 256 // (16 if T.Q6_K in types else 32)
    assert len({(k, v.dtype, v.shape[1]) for t in tensors for k, v in t.items()}) == len(tensors[0])  # they cat
    for raw, q, t in zip(raws, types, tensors):
        assert np.array_equal(bits(dequantized(mode, t, torch.float32)), bits(ggml.dequantize(raw, q)))


def _write_gguf(path, tensors: dict[str, tuple[np.ndarray, T]], arch: str = "llama"):
    writer = GGUFWriter(str(path), arch)
    for name, (raw, qtype) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", [T.Q2_K, T.IQ4_XS, T.Q3_K])
def test_unsupported_types_are_refused_by_name_before_any_work(tmp_path, qtype):
    rng = np.random.default_rng(0)
    src = _write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": (random_blocks(T.Q4_K, 4, 256, rng), T.Q4_K),
                                            "blk.1.ffn_down.weight": (rng.integers(0, 255, (4, GGML_QUANT_SIZES[
                                                qtype][1]), dtype=np.uint8), qtype)})
    natively = r"Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K"
    with pytest.raises(ImportError_, match=rf"tensor type {qtype.name} \(e.g. blk.1.ffn_down.weight\) is not kept "
                                           rf"quantized \(natively: {natively}\); use --dequantize"):
        import_checkpoint(src, tmp_path / "out", dequantize=False)
    assert not (tmp_path / "out").exists()


# A tiny llama in the spirit of Q4_K_M: Q4_K mostly, Q6_K for layer 0's v and down, and other types in layer 1.
TYPES = [{"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q6_K, "attn_output": T.Q4_K, "ffn_gate": T.Q4_K,
          "ffn_up": T.Q4_K, "ffn_down": T.Q6_K},
         {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q4_K, "attn_output": T.Q8_0, "ffn_gate": T.Q5_K,
          "ffn_up": T.Q4_K, "ffn_down": T.Q4_K}]
HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(GGUF file, its dequantized import): an HF llama whose decoder linears are the file's blocks dequantized
    by gguf-py, q/k rows un-permuted by transformers' own code (what the real import does)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    ref = tmp_path_factory.mktemp("dequantized")
    LlamaForCausalLM(cfg).save_pretrained(ref)
    state, tensors, rng = load_file(ref / "model.safetensors"), {}, np.random.default_rng(7)
    for i, types in enumerate(TYPES):
        for name, qtype in types.items():
            key = f"model.layers.{i}.{HF[name]}.weight"
            raw = random_blocks(qtype, state[key].shape[0], state[key].shape[1], rng, D_MAX[qtype])
            w = ggml.dequantize(raw, qtype)
            if name in ("attn_q", "attn_k"):
                heads = cfg.num_attention_heads if name == "attn_q" else cfg.num_key_value_heads
                w = LlamaTensorProcessor()._reverse_permute_weights(w, heads, heads)
            state[key] = torch.from_numpy(np.ascontiguousarray(w))
            tensors[f"blk.{i}.{name}.weight"] = (raw, qtype)
    save_file(state, str(ref / "model.safetensors"), metadata={"format": "pt"})
    return _write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tensors), ref


def _copy(ref, out):
    out.mkdir()
    for f in ref.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_mixed_file_served_from_its_own_blocks_gives_the_dequantized_logits(tiny_gguf, tmp_path):
    src, ref = tiny_gguf
    out = _copy(ref, tmp_path / "native")
    entry = keep_quantized(src, out)
    assert entry == {"mode": "int4_asym", "group_size": 32, "keep_attention_fp16": False, "weight_scale": "per_group",
                     "activation_scale": "none", "quantized_tensors": 14, "source": "gguf:Q4_K+Q5_K+Q6_K+Q8_0",
                     "modules": {"layers.0.mlp.down_proj": "int8_group_sym",
                                 "layers.0.self_attn.qkv_proj": "int8_group_asym",
                                 "layers.1.mlp.gate_up_proj": "int8_group_asym",
                                 "layers.1.self_attn.o_proj": "int8_group_sym"}}
    assert json.loads((out / "config.json").read_text())["quantization"] == entry
    ids = [3, 17, 42, 5, 9, 60, 1]
    (got, ours), (want, theirs) = prefill_logits(out, ids), prefill_logits(ref, ids)
    assert torch.equal(got, want) and torch.equal(got.argmax(-1), want.argmax(-1))
    kinds = [(type(layer.self_attn.qkv_proj), type(layer.self_attn.o_proj), type(layer.mlp.gate_up_proj),
              type(layer.mlp.down_proj)) for layer in ours.layers]
    assert kinds == [(Int8GroupAsymLinear, Int4AsymLinear, Int4AsymLinear, Int8GroupSymLinear),
                     (Int4AsymLinear, Int8GroupSymLinear, Int8GroupAsymLinear, Int4AsymLinear)]
    assert ours.layers[0].self_attn.qkv_proj.group_size == 16 and ours.layers[0].mlp.down_proj.group_size == 16
    for a, b in zip(ours.layers, theirs.layers):
        assert torch.equal(a.mlp.gate_up_proj.dequantized(), b.mlp.gate_up_proj.weight)
        assert torch.equal(a.self_attn.qkv_proj.dequantized(), b.self_attn.qkv_proj.weight)


def test_a_module_mode_the_model_lacks_or_a_bad_one_is_refused(tiny_gguf, tmp_path):
    src, ref = tiny_gguf
    out = _copy(ref, tmp_path / "native")
    keep_quantized(src, out)
    cfg = json.loads((out / "config.json").read_text())
    for modules, message in (({"layers.0.mlp.down_proj": "int9"}, r"quantization\.modules\.layers\.0\.mlp\.down_proj"),
                             ({"layers.7.mlp.down_proj": "int8_group_sym"}, r"'layers\.7\.mlp\.down_proj' is not")):
        cfg["quantization"]["modules"] = modules
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=message):
            load_model(out, torch.float32, torch.device("cpu"))


def test_a_block_that_does_not_dequantize_to_the_import_fails_it_naming_the_tensor(tiny_gguf, tmp_path):
    src, ref = tiny_gguf
    out = _copy(ref, tmp_path / "native")
    state = load_file(out / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] += 1.0
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NativeImportError, match=r"blk\.1\.ffn_up\.weight: repacked as int8_group_asym, it does not"):
        keep_quantized(src, out)


MIX_LAYERS = 4  # of SmolLM2's 30: every kind in both ffn_down positions; more layers add time, not coverage


def _requantized_smollm2(path):
    """The embedded SmolLM2 (Q4_1), its first MIX_LAYERS layers, rewritten as a mix of every kind the import keeps
    (metadata and tokenizer copied): rows of 576 inputs take the 32-blocks llama.cpp falls back to (Q5_0, Q5_1,
    Q8_0, IQ4_NL), ffn_down (1536 inputs) Q4_K / Q6_K. gguf-py quantizes the first three; the others are random
    blocks of the weights' size (their values need not be good, only read exactly)."""
    from gguf import GGUFValueType

    from build_engines.importer import embedded_gguf

    reader, rng = Reader(embedded_gguf()), np.random.default_rng(3)
    writer = GGUFWriter(str(path), "llama")
    for field in reader.fields.values():
        if field.name != "general.architecture" and not field.name.startswith("GGUF."):
            sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            value = MIX_LAYERS if field.name == "llama.block_count" else field.contents()
            writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    kinds = {"attn_q": T.Q5_0, "attn_k": T.Q5_0, "attn_v": T.Q8_0, "attn_output": T.IQ4_NL, "ffn_gate": T.Q5_1,
             "ffn_up": T.Q5_0}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= MIX_LAYERS:
            continue
        if parts[0] != "blk" or parts[2] not in (*kinds, "ffn_down"):
            writer.add_tensor(t.name, t.data, raw_dtype=None if t.tensor_type == T.F32 else t.tensor_type)
            continue
        w = ggml.dequantize(t.data, t.tensor_type)
        qtype = kinds.get(parts[2]) or (T.Q4_K, T.Q6_K)[int(parts[1]) % 2]
        if qtype in (T.IQ4_NL, T.Q4_K, T.Q6_K):
            d_max = float(np.abs(w).max()) / {T.IQ4_NL: 127, T.Q4_K: 63 * 15, T.Q6_K: 127 * 32}[qtype]
            raw = random_blocks(qtype, w.shape[0], w.shape[1], rng, d_max)
        else:
            raw = ggml.quantize(w, qtype)
        writer.add_tensor(t.name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_cli_import_keeps_a_mixed_smollm2_quantized_and_serves_the_dequantized_logits(tmp_path, tokenizer):
    from build_engines.__main__ import main as cli_main

    src = _requantized_smollm2(tmp_path / "smollm2-mix.gguf")
    native, plain = tmp_path / "native", tmp_path / "dequantized"
    assert cli_main(["import", str(src), "--output", str(native)]) == 0
    assert cli_main(["import", str(src), "--output", str(plain), "--dequantize"]) == 0
    entry = json.loads((native / "config.json").read_text())["quantization"]
    assert "quantization" not in json.loads((plain / "config.json").read_text())
    assert (entry["mode"], entry["group_size"], entry["source"]) == (
        "int8_group_sym", 32, "gguf:IQ4_NL+Q4_K+Q5_0+Q5_1+Q6_K+Q8_0")
    assert entry["modules"] == {
        **{f"layers.{i}.mlp.gate_up_proj": "int8_group_asym" for i in range(MIX_LAYERS)},
        **{f"layers.{i}.mlp.down_proj": "int4_asym" for i in range(0, MIX_LAYERS, 2)}}
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    (got, ours), (want, _) = prefill_logits(native, ids), prefill_logits(plain, ids)
    assert torch.equal(got, want)
    assert isinstance(ours.layers[0].mlp.down_proj, Int4AsymLinear)
    assert isinstance(ours.layers[1].mlp.down_proj, Int8GroupSymLinear)
