"""Offline quantization (llmserve/model/quantize.py) and loading quantized checkpoints, on CPU."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llmserve.model.attention import AttentionMetadata
from llmserve.model.linear import FP8, dequantize, quantize_weight
from llmserve.model.llama import load_model
from llmserve.model.quantize import main, quantize_checkpoint
from tests.conftest import model_logits, prefill_logits


def test_int8_round_trip_within_half_a_step_per_channel():
    w = torch.randn(64, 300) * torch.linspace(0.01, 2.0, 64)[:, None]  # channels of very different ranges
    q, s = quantize_weight(w, "int8_wo")
    assert q.dtype == torch.int8 and s.shape == (64,) and s.dtype == torch.float32
    err = (dequantize(q, s) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()
    assert ((dequantize(q, s) - w).norm() / w.norm()) < 0.01
    assert q.abs().max() == 127  # each row's largest magnitude lands on the grid's end


def test_fp8_round_trip_relative_error():
    w = torch.randn(64, 300) * torch.linspace(0.01, 2.0, 64)[:, None]
    q, s = quantize_weight(w, "fp8")
    assert q.dtype == FP8
    back = dequantize(q, s)
    assert ((back - w).norm() / w.norm()) < 0.04
    normal = (w / s[:, None]).abs() >= 2 ** -6  # e4m3 normals: 3 mantissa bits, so at most 2^-4 relative error
    assert ((back - w).abs()[normal] <= (w.abs() * 2 ** -4 + 1e-9)[normal]).all()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        quantize_weight(torch.randn(4, 4), "int4")


@pytest.mark.parametrize("mode,keep,tol", [("int8_wo", False, 0.05), ("fp8", False, 0.25), ("fp8", True, 0.2)])
def test_quantized_checkpoint_loads_and_tracks_the_original(tiny_hf_checkpoint, tmp_path, mode, keep, tol):
    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", mode, keep_attention_fp16=keep)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["mode"] == mode and cfg["quantization"]["keep_attention_fp16"] == keep
    state = load_file(out / "model.safetensors")
    storage = torch.int8 if mode == "int8_wo" else FP8
    assert state["model.layers.0.mlp.down_proj.weight"].dtype == storage
    assert state["model.layers.0.mlp.down_proj.weight_scale"].dtype == torch.float32
    attn = state["model.layers.1.self_attn.q_proj.weight"].dtype
    assert (attn == torch.float32) if keep else (attn == storage)
    assert state["model.embed_tokens.weight"].dtype == torch.float32  # embedding / lm_head stay unquantized
    ids = list(range(3, 40))
    (ref, _), (got, _) = prefill_logits(tiny_hf_checkpoint, ids), prefill_logits(out, ids)
    assert ((got - ref).norm() / ref.norm()).item() < tol
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.7


def test_quantize_cli_and_double_quantization_refused(tiny_hf_checkpoint, tmp_path):
    assert main([str(tiny_hf_checkpoint), str(tmp_path / "q"), "--mode", "int8_wo"]) == 0
    assert (tmp_path / "q" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq", "fp8")


def test_fp8_weight_only_computes_hf_fake_quant(tiny_hf_checkpoint, tmp_path):
    """Our fp8 checkpoint with 16-bit activations (the batch-1 GEMV path) is, in float32, exactly transformers'
    model with its q/k/v/o/gate/up/down weights fake-quantized to e4m3 per row (scale = row amax / 448) and the
    tied embedding / lm_head untouched: the reference of issue 22 item 5 (bench/hf_fake_quant.py)."""
    from transformers import LlamaForCausalLM

    from bench.hf_fake_quant import ATTENTION as HF_ATTENTION
    from bench.hf_fake_quant import MLP as HF_MLP
    from bench.hf_fake_quant import fake_fp8
    from llmserve.model.linear import Fp8Linear

    hf = LlamaForCausalLM.from_pretrained(tiny_hf_checkpoint, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, mod in hf.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in HF_ATTENTION + HF_MLP:
                mod.weight.copy_(fake_fp8(mod.weight, torch.float32, "row"))
    ids = list(range(3, 40))
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", "fp8")
    model = load_model(out, torch.float32, torch.device("cpu"))
    for m in model.modules():
        if isinstance(m, Fp8Linear):
            m.quantize_activations = False
    model.init_rope(64, torch.device("cpu"))
    meta = AttentionMetadata.for_prefill([len(ids)], 4, torch.device("cpu"))
    cache = torch.zeros(2, 2, -(-len(ids) // 4), 4, model.args.num_kv_heads, model.args.head_dim)
    with torch.inference_mode():
        got = model(torch.tensor(ids), torch.arange(len(ids)), cache, meta, None)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_an_int8_lm_head_computes_the_fake_quantized_head_and_keeps_the_embedding(tiny_hf_checkpoint, tmp_path):
    """quantization.lm_head "int8_wo": the tied head gets an int8 copy of its own (the embedding stays 16-bit), the
    logits are the 16-bit head's model with that head fake-quantized per row, a pipeline's last stage loads it, and
    a mode the lm_head does not take is refused naming the field, by the quantizer and at load."""
    from llmserve.model.linear import Int8Linear
    from llmserve.model.pipeline_parallel import keep_stage

    def load(path, **kwargs):
        return load_model(path, torch.float32, torch.device("cpu"), kernel_mode="off", **kwargs)

    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", "int8_wo", lm_head="int8_wo")
    plain = load(quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "p", "int8_wo"))
    state = load_file(out / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["quantization"]["lm_head"] == "int8_wo"
    assert state["lm_head.weight"].dtype == torch.int8
    assert state["lm_head.weight_scale"].shape == (plain.args.vocab_size,)
    model = load(out)
    assert isinstance(model.lm_head, Int8Linear) and torch.equal(model.embed_tokens.weight, plain.embed_tokens.weight)
    head = dequantize(*quantize_weight(plain.lm_head.weight.detach(), "int8_wo"))
    plain.lm_head.weight = torch.nn.Parameter(head, requires_grad=False)  # untied: the embedding stays
    ids = list(range(3, 40))
    torch.testing.assert_close(prefill_logits(out, ids)[0], model_logits(plain, ids), rtol=1e-5, atol=1e-5)
    last = load(out, select=lambda m: keep_stage(m, 1, 2))
    assert torch.equal(last.lm_head.weight, model.lm_head.weight) and last.embed_tokens is None
    with pytest.raises(ValueError, match="quantization.lm_head"):
        quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "x", "int8_wo", lm_head="int4_sym")
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization"]["lm_head"] = "fp8"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"quantization\.lm_head: expected one of"):
        load(out)
