"""4-bit group weights (llmserve/model/int4.py): the packed layout, round-to-nearest, `Int4Linear`'s torch path,
and int4 checkpoints written by llmserve/model/quantize.py loading through the normal load path, on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from llmserve.model.int4 import Int4AsymLinear, Int4SymLinear, dequantize_int4, pack, quantize_int4, unpack
from llmserve.model.linear import Linear
from llmserve.model.llama import load_model
from llmserve.model.quantize import main, quantize_checkpoint
from tests.conftest import prefill_logits

GROUPS = [32, 64, 128]


def test_layout_is_group_halves():
    """Byte i of a group holds element i (low nibble) and element i + g/2 (high nibble): GGUF Q4_0/Q4_1's order."""
    g = 32
    q = torch.randint(0, 16, (3, 4 * g), generator=torch.Generator().manual_seed(0))
    p = pack(q, g)
    assert p.dtype == torch.uint8 and p.shape == (3, 2 * g)
    for grp in range(4):
        for i in range(g // 2):
            byte = p[:, grp * g // 2 + i]
            assert torch.equal(byte & 15, q[:, grp * g + i].to(torch.uint8))
            assert torch.equal(byte >> 4, q[:, grp * g + g // 2 + i].to(torch.uint8))
    assert torch.equal(unpack(p, g), q.to(torch.uint8))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_to_nearest_error_is_half_a_step(group, symmetric):
    torch.manual_seed(group)
    w = torch.randn(40, 3 * 128) * torch.linspace(0.01, 2.0, 40)[:, None]  # rows of very different ranges
    t = quantize_int4(w, group, symmetric)
    assert t["weight_scale"].dtype == torch.float16 and t["weight_scale"].shape == (40, 3 * 128 // group)
    assert ("weight_min" in t) != symmetric
    back = dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"))
    step = t["weight_scale"].float().repeat_interleave(group, 1)
    amax = w.abs().reshape(40, -1, group).amax(-1).repeat_interleave(group, 1)
    # half a step, plus the float16 rounding of the stored scale / minimum at the group's ends
    assert ((back - w).abs() <= step / 2 + amax * 2 ** -9).all()
    codes = unpack(t["weight"], group).reshape(40, -1, group)
    if symmetric:  # each group's largest magnitude lands on +-7 (the grid is -8..7 around the offset 8)
        assert ((codes.int() - 8).abs().amax(-1) == 7).all()
    else:  # each group spans the whole 0..15 grid
        assert (codes.amin(-1) == 0).all() and (codes.amax(-1) == 15).all()


def test_all_zero_group_stays_finite():
    w = torch.zeros(2, 64)
    w[1, 32:] = torch.randn(32)
    for symmetric in (True, False):
        t = quantize_int4(w, 32, symmetric)
        back = dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"))
        assert torch.isfinite(back).all() and torch.equal(back[0], torch.zeros(64))


def test_bad_group_sizes_are_refused():
    with pytest.raises(ValueError, match="group_size: expected one of"):
        quantize_int4(torch.randn(4, 96), 48, True)
    with pytest.raises(ValueError, match="group_size: 64 does not divide in_features 96"):
        quantize_int4(torch.randn(4, 96), 64, True)


@pytest.mark.parametrize("cls", [Int4SymLinear, Int4AsymLinear])
@pytest.mark.parametrize("gated", [False, True])
def test_int4_linear_torch_path_is_the_dequantized_matmul(cls, gated):
    torch.manual_seed(1)
    lin = Linear(128, 48)
    lin.weight.data.normal_()
    q = cls.from_linear(lin, group_size=64)
    assert q.group_size == 64 and q.weight.shape == (48, 64)
    x = torch.randn(5, 256 if gated else 128)
    w = q.dequantized()
    h = F.silu(x[:, :128]) * x[:, 128:] if gated else x
    assert torch.equal(q(x, gated=gated), F.linear(h, w))
    assert ((w - lin.weight).norm() / lin.weight.norm()) < 0.15  # 4 bits: about 10% of the weights' norm


@pytest.mark.parametrize("mode,group,keep", [("int4_sym", 128, False), ("int4_asym", 32, False),
                                             ("int4_sym", 64, True)])
def test_int4_checkpoint_loads_and_tracks_the_original(tiny_hf_checkpoint, tmp_path, mode, group, keep):
    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", mode, keep_attention_fp16=keep, group_size=group)
    entry = json.loads((out / "config.json").read_text())["quantization"]
    assert entry["mode"] == mode and entry["group_size"] == group and entry["keep_attention_fp16"] == keep
    state = load_file(out / "model.safetensors")
    down = "model.layers.0.mlp.down_proj."
    assert state[down + "weight"].dtype == torch.uint8 and state[down + "weight"].shape == (128, 128)
    scale = state[down + "weight_scale"]
    assert scale.dtype == torch.float16 and scale.shape == (128, 256 // group)
    assert (down + "weight_min" in state) == (mode == "int4_asym")
    q_proj = state["model.layers.1.self_attn.q_proj.weight"].dtype
    assert q_proj == (torch.float32 if keep else torch.uint8)
    ids = list(range(3, 40))
    (ref, _), (got, model) = prefill_logits(_fake_quantized(tiny_hf_checkpoint, out, tmp_path / "fq"), ids), \
        prefill_logits(out, ids)
    mlp = model.layers[0].mlp.gate_up_proj
    assert type(mlp).mode == mode and mlp.group_size == group and mlp.weight_scale.dtype == torch.float16
    # the int4 model computes what the 16-bit model holding its dequantized weights computes
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def _fake_quantized(src, quantized, out):
    """`src` with every weight that `quantized` holds in 4 bits replaced by its dequantized values."""
    state, q = load_file(src / "model.safetensors"), load_file(quantized / "model.safetensors")
    for key, t in q.items():
        if t.dtype == torch.uint8:
            base = key.removesuffix("weight")
            state[key] = dequantize_int4(t, q[base + "weight_scale"], q.get(base + "weight_min"))
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((src / "config.json").read_text())
    return out


def _rewrite(ckpt, edit_config=None, edit_state=None):
    if edit_config:
        cfg = json.loads((ckpt / "config.json").read_text())
        edit_config(cfg["quantization"])
        (ckpt / "config.json").write_text(json.dumps(cfg))
    if edit_state:
        state = load_file(ckpt / "model.safetensors")
        edit_state(state)
        save_file(state, str(ckpt / "model.safetensors"))


def test_unknown_or_inconsistent_quantization_fields_are_refused_at_load(tiny_hf_checkpoint, tmp_path):
    out = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q", "int4_sym", group_size=64)
    _rewrite(out, lambda q: q.update(zero_point="int4"))
    with pytest.raises(ValueError, match=r"quantization\.zero_point: unknown quantization field"):
        load_model(out, torch.float32, torch.device("cpu"))
    _rewrite(out, lambda q: (q.pop("zero_point"), q.update(group_size=128)))
    with pytest.raises(ValueError, match=r"quantization\.group_size: .*down_proj.weight_scale.*groups of 128"):
        load_model(out, torch.float32, torch.device("cpu"))
    _rewrite(out, lambda q: q.update(group_size=64, mode="int3"))
    with pytest.raises(ValueError, match=r"quantization\.mode: .*'int3'"):
        load_model(out, torch.float32, torch.device("cpu"))
    q8 = quantize_checkpoint(tiny_hf_checkpoint, tmp_path / "q8", "int8_wo")
    _rewrite(q8, lambda q: q.update(group_size=32))
    with pytest.raises(ValueError, match=r"quantization\.group_size: only int4 modes have groups"):
        load_model(q8, torch.float32, torch.device("cpu"))


def test_quantize_cli_int4(tiny_hf_checkpoint, tmp_path):
    assert main([str(tiny_hf_checkpoint), str(tmp_path / "q"), "--mode", "int4_asym", "--group-size", "64",
                 "--keep-attention-fp16"]) == 0
    entry = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert (entry["mode"], entry["group_size"], entry["keep_attention_fp16"]) == ("int4_asym", 64, True)
    with pytest.raises(SystemExit):
        main([str(tiny_hf_checkpoint), str(tmp_path / "q2"), "--mode", "int4_sym", "--group-size", "48"])
