"""AWQ scale search (llmserve/model/awq.py) on tiny random HF Llama checkpoints, on CPU: the fake quantizer, the
recorded calibration inputs, that folding keeps the 16-bit function, that the search never loses to RTN on its
own loss, and the `--awq` checkpoints."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from llmserve.model import awq
from llmserve.model.attention import AttentionMetadata
from llmserve.model.int4 import dequantize_int4, quantize_int4
from llmserve.model.llama import load_model
from llmserve.model.quantize import main, quantize_checkpoint
from llmserve.model.weights import load_safetensors

CPU = torch.device("cpu")


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_is_the_int4_round_trip(group, symmetric):
    torch.manual_seed(group)
    w = torch.randn(24, 256) * torch.linspace(0.01, 3.0, 24)[:, None]
    w[3, :group] = 0.0  # an all-zero group (the TINY scale)
    t = quantize_int4(w, group, symmetric)
    assert torch.equal(awq.fake_quant(w, group, symmetric), dequantize_int4(t["weight"], t["weight_scale"],
                                                                            t.get("weight_min")))


def _model(ckpt):
    return load_model(ckpt, torch.float32, CPU, kernel_mode="off")


def _ids(ckpt):
    return Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(awq.CALIBRATION.read_text()).ids[:awq.MAX_TOKENS]


def _logits(ckpt, ids):
    model = _model(ckpt)
    model.init_rope(len(ids), CPU)
    a = model.args
    meta = AttentionMetadata.for_prefill([len(ids)], 4, CPU)
    cache = torch.zeros(a.num_layers, 2, -(-len(ids) // 4), 4, a.num_kv_heads, a.head_dim)
    with torch.inference_mode():
        return model(torch.tensor(ids), torch.arange(len(ids)), cache, meta, None)


def test_recorded_inputs_are_what_each_linear_reads(tiny_hf_checkpoint):
    """down_proj is called with gated=True on [gate | up]: its recorded input must be silu(gate) * up."""
    model = _model(tiny_hf_checkpoint)
    ids = _ids(tiny_hf_checkpoint)[:200]
    feats = awq.calibration_inputs(model, ids)
    assert len(feats) == 2 and all(set(f) == {"attn", "o", "mlp", "down"} for f in feats)
    for layer, f in zip(model.layers, feats):
        assert f["attn"].shape == (200, 128) and f["o"].shape == (200, 128) and f["down"].shape == (200, 256)
        gate, up = (f["mlp"] @ layer.mlp.gate_up_proj.weight.t()).chunk(2, dim=-1)
        torch.testing.assert_close(f["down"], F.silu(gate) * up, rtol=1e-5, atol=1e-5)


def _scaled_copy(src, out, state):
    out.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(src / name, out / name)
    return out


@pytest.mark.parametrize("which,keep,groups", [("tiny_hf_checkpoint", False, 6), ("tiny_hf_checkpoint_mha", False, 8),
                                              ("tiny_hf_checkpoint_mha", True, 4)])
def test_folding_the_scales_keeps_the_16bit_logits(request, tmp_path, which, keep, groups):
    src = request.getfixturevalue(which)
    state = load_safetensors(src)
    before = {k: v.clone() for k, v in state.items()}
    assert awq.apply_awq_(state, src, 128, True, keep_attention_fp16=keep, clip=False) == groups
    changed = {k for k in state if not torch.equal(state[k].float(), before[k].float())}
    assert "model.layers.0.mlp.down_proj.weight" in changed and "model.layers.1.mlp.up_proj.weight" in changed
    assert ("model.layers.0.self_attn.q_proj.weight" in changed) != keep
    # o_proj is scaled (into v_proj's rows) only without grouped-query attention
    assert ("model.layers.0.self_attn.o_proj.weight" in changed) == (which.endswith("mha") and not keep)
    assert state["model.layers.0.input_layernorm.weight"].dtype == before["model.layers.0.input_layernorm.weight"].dtype
    ids = list(range(3, 60))
    ref, got = _logits(src, ids), _logits(_scaled_copy(src, tmp_path / "s", state), ids)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def _loss(x, w, s, group, symmetric):
    return (x @ w.t() - (x / s) @ awq.fake_quant(w * s, group, symmetric).t()).pow(2).mean().item()


@pytest.mark.parametrize("group,symmetric", [(128, True), (32, False)])
def test_awq_loss_is_at_most_rtn_per_group(tiny_hf_checkpoint_mha, group, symmetric):
    model = _model(tiny_hf_checkpoint_mha)
    feats = awq.calibration_inputs(model, _ids(tiny_hf_checkpoint_mha))
    state = load_safetensors(tiny_hf_checkpoint_mha)
    gains = []
    for i, f in enumerate(feats):
        for x, _, names in awq.plans(f, i, keep_attention_fp16=False, mha=True):
            w = torch.cat([state[n + ".weight"] for n in names]).float()
            s = awq.search_scale(x, w, group, symmetric)
            rtn, found = _loss(x, w, torch.ones_like(s), group, symmetric), _loss(x, w, s, group, symmetric)
            assert found <= rtn, names
            gains.append(found < rtn)
    assert len(gains) == 8 and any(gains)  # the search does move off r = 0 somewhere


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_search_lowers_the_output_error_where_a_group_has_an_outlier(symmetric):
    """Per row and group, the chosen bound's error is at most no clipping's; symmetric steps span +-amax, so a lone
    large weight there gets clipped (an asymmetric group's range may keep it: its steps already follow min and max)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 256, generator=gen), torch.randn(16, 256, generator=gen) * 0.02
    w[3, 70] = 0.5  # an outlier in row 3, group 1 (of 64)
    bound = awq.search_clip(x, w, 64, symmetric)
    amax = w.reshape(16, 4, 64).abs().amax(-1, keepdim=True)
    assert bound.shape == (16, 4, 1) and bool((bound <= amax).all())
    if symmetric:
        assert bound[3, 1, 0] < amax[3, 1, 0]

    def err(b):
        c = torch.maximum(torch.minimum(w.reshape(16, 4, 64), b), -b).reshape(16, 256)
        return (x @ (awq.fake_quant(c, 64, symmetric) - w).t()).pow(2).mean().item()
    assert err(bound) < err(amax) if symmetric else err(bound) <= err(amax)


def test_awq_checkpoint_loads_and_tracks_the_original(tiny_hf_checkpoint, tmp_path):
    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", "int4_sym", group_size=64, awq=True)
    with open(out / "model.safetensors", "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    assert header["__metadata__"]["llmserve_awq"] == "on"
    state = load_file(out / "model.safetensors")
    assert state["model.layers.0.mlp.down_proj.weight"].dtype == torch.uint8
    assert state["model.layers.0.post_attention_layernorm.weight"].dtype == torch.float32
    # it computes what the 16-bit model with the folded scales and round-to-nearest weights computes
    folded = load_safetensors(tiny_hf_checkpoint)
    awq.apply_awq_(folded, tiny_hf_checkpoint, 64, True)
    for key, t in state.items():
        if t.dtype == torch.uint8:
            folded[key] = awq.fake_quant(folded[key], 64, True)
    ids = list(range(3, 60))
    got = _logits(out, ids)
    torch.testing.assert_close(got, _logits(_scaled_copy(tiny_hf_checkpoint, tmp_path / "fq", folded), ids),
                               rtol=1e-4, atol=1e-4)
    assert type(_model(out).layers[1].mlp.down_proj).mode == "int4_sym"
    rtn = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "rtn", "int4_sym", group_size=64)
    ref, plain = _logits(tiny_hf_checkpoint, ids), _logits(rtn, ids)
    err, rtn_err = ((got - ref).norm() / ref.norm()).item(), ((plain - ref).norm() / ref.norm()).item()
    # random weights have no salient channels (and 4 bits move these spread-out logits by ~50%): no gain is
    # promised, only no clear loss
    assert err < 1.2 * rtn_err


def test_awq_with_a_non_int4_mode_is_refused(tiny_hf_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="awq: only for the int4 modes"):
        quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", "fp8", awq=True)
    with pytest.raises(ValueError, match="awq"):
        main([str(tiny_hf_checkpoint), str(tmp_path / "q2"), "--mode", "int8_wo", "--awq"])
    assert not (tmp_path / "q").exists() and not (tmp_path / "q2").exists()
