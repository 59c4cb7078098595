"""4-bit HF checkpoints made by others (build_engines/hf_int4.py): a tiny random Llama quantized here with a
float32 round-to-nearest reference, packed into AutoAWQ GEMM and GPTQ layouts by packers written from those
projects' documented loops (independently of the code under test), imported, loaded and served on CPU."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from build_engines.hf_int4 import to_ours, unpack_awq, unpack_gptq
from build_engines.importer import ImportError_, import_checkpoint
from llmserve.model.attention import AttentionMetadata
from llmserve.model.int4 import dequantize_int4
from llmserve.model.llama import load_model

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ gemm.py: nibble i of a word holds column 8c + AWQ_ORDER[i]
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = PROJ[:4]


@pytest.fixture(scope="module")
def hf_float(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF's init (std 0.02) leaves logits nearly flat: spread them so token errors show
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    out = tmp_path_factory.mktemp("hf_float")
    model.save_pretrained(out)
    return out


def rtn(w: torch.Tensor, g: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference round-to-nearest of W [N, K] in float32 -> codes [N, K], zeros [N, K/g], fp16 scales [N, K/g]
    with w ~ s * (q - z) (GPTQ's quantizer: sym uses z = 8 and s = 2 absmax / 15)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // g, g)
    if sym:
        s = (2 * wg.abs().amax(-1) / 15).half().clamp(min=1e-4)
        z = torch.full_like(s, 8, dtype=torch.int64)
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        s = ((hi - lo) / 15).half().clamp(min=1e-4)
        z = torch.round(-lo / s.float()).clamp(0, 15).long()
    q = (torch.round(wg / s.float()[..., None]) + z[..., None]).clamp(0, 15).long()
    return q.reshape(n, k), z, s


def dequant_ref(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """scale * (q - z) in float32, per group: the reference every result is checked against."""
    n, k = q.shape
    g = k // s.shape[1]
    return (s.float()[..., None] * (q.reshape(n, -1, g) - z[..., None]).float()).reshape(n, k)


def _int32(x: torch.Tensor) -> torch.Tensor:
    """uint32 bit patterns held in int64 -> the int32 with the same bits (what numpy's astype(int32) gives)."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def pack_awq(q, z, s):
    """AutoAWQ WQLinear_GEMM.from_linear: intweight [K, N]; qweight[:, c] |= intweight[:, 8c + ORDER[i]] << 4i."""
    def words(v: torch.Tensor) -> torch.Tensor:  # v [rows, N] -> [rows, N / 8]
        out = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.int64)
        for c in range(v.shape[1] // 8):
            for i in range(8):
                out[:, c] |= v[:, 8 * c + AWQ_ORDER[i]] << (4 * i)
        return _int32(out)
    return {"qweight": words(q.t()), "qzeros": words(z.t()), "scales": s.t().contiguous()}


def pack_gptq(q, z, s, v1: bool):
    """AutoGPTQ QuantLinear.pack: qweight[r] |= intweight[8r + j] << 4j along K; `zeros -= 1` (v1 only), then
    qzeros[:, c] |= zeros[:, 8c + j] << 4j along N; g_idx = i // group_size."""
    k, g = q.shape[1], q.shape[1] // s.shape[1]
    iw = q.t()  # [K, N]
    qweight = torch.zeros(k // 8, iw.shape[1], dtype=torch.int64)
    for r in range(k // 8):
        for j in range(8):
            qweight[r] |= iw[8 * r + j] << (4 * j)
    zs = z.t() - 1 if v1 else z.t()  # [K/g, N]; every zero here is >= 1 (asserted by the caller)
    qzeros = torch.zeros(zs.shape[0], zs.shape[1] // 8, dtype=torch.int64)
    for c in range(zs.shape[1] // 8):
        for j in range(8):
            qzeros[:, c] |= zs[:, 8 * c + j] << (4 * j)
    g_idx = (torch.arange(k) // g).to(torch.int32)
    return {"qweight": _int32(qweight), "qzeros": _int32(qzeros), "scales": s.t().contiguous(), "g_idx": g_idx}


CASES = {  # name: (quantization_config, keep attention unquantized)
    "awq-g128": ({"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 128, "zero_point": True}, False),
    "awq-g64-mlp-only": ({"quant_method": "awq", "version": "GEMM", "w_bit": 4, "q_group_size": 64,
                          "zero_point": True, "modules_to_not_convert": ["self_attn"]}, True),
    "gptq-asym-g32": ({"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
                       "checkpoint_format": "gptq"}, False),
    "gptq-sym-g128": ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}, False),
    "gptq_v2-asym-g64": ({"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": True, "sym": False,
                          "checkpoint_format": "gptq_v2"}, False),
}


def write_quantized(src, dst, qc: dict, keep_attention: bool):
    """`src` with its decoder linears quantized (reference RTN) and packed per `qc`; returns the references
    {HF weight key: (q, z, s)}."""
    state = load_file(src / "model.safetensors")
    method, g = qc["quant_method"], qc.get("group_size", qc.get("q_group_size"))
    sym, v1 = bool(qc.get("sym")), qc.get("checkpoint_format", "gptq") == "gptq"
    refs = {}
    for key in [k for k in state if k.rpartition(".")[0].rpartition(".")[2] in PROJ]:
        base = key.removesuffix(".weight")
        if keep_attention and base.rpartition(".")[2] in ATTENTION:
            continue
        q, z, s = rtn(state.pop(key), g, method == "gptq" and sym)
        assert method == "awq" or not v1 or z.min() >= 1  # v1 cannot store zero 0 (AutoGPTQ's overflow)
        packed = pack_awq(q, z, s) if method == "awq" else pack_gptq(q, z, s, v1)
        state.update({f"{base}.{leaf}": t for leaf, t in packed.items()})
        refs[key] = (q, z, s)
    dst.mkdir()
    save_file(state, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(cfg))
    return refs


def write_reference(src, dst, refs):
    """The float model whose decoder linears hold the reference dequantization (scale * (q - z))."""
    state = load_file(src / "model.safetensors")
    state.update({k: dequant_ref(*r) for k, r in refs.items()})
    dst.mkdir()
    save_file(state, str(dst / "model.safetensors"))
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def greedy(model, prompt: list[int], steps: int = 20) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens, each step a fresh prefill of the whole sequence (simple and exact on CPU)."""
    model.init_rope(64, torch.device("cpu"))
    ids, first = list(prompt), None
    a = model.args
    for _ in range(steps):
        meta = AttentionMetadata.for_prefill([len(ids)], 4, torch.device("cpu"))
        cache = torch.zeros(a.num_layers, 2, -(-len(ids) // 4), 4, a.num_kv_heads, a.head_dim)
        with torch.inference_mode():
            logits = model(torch.tensor(ids), torch.arange(len(ids)), cache, meta, None)
        first = logits if first is None else first
        ids.append(int(logits[-1].argmax()))
    return ids[len(prompt):], first


def _ours(model, key: str) -> torch.Tensor:
    """Our loaded module's dequantized rows of HF weight `key` (q/k/v and gate/up are packed in ours)."""
    layer, name = int(key.split(".")[2]), key.split(".")[-2]
    a = model.args
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    rows = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv), "o_proj": None,
            "gate_proj": (0, a.intermediate_size), "up_proj": (a.intermediate_size, 2 * a.intermediate_size),
            "down_proj": None}[name]
    parent = model.layers[layer].self_attn if name in ATTENTION else model.layers[layer].mlp
    module = getattr(parent, {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                              "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}.get(name, name))
    w = module.dequantized(torch.float32)
    return w if rows is None else w[rows[0]:rows[1]]


def check_against_reference(got: torch.Tensor, q, z, s, symmetric: bool) -> int:
    """Exact for sym; asym: our s * q + m differs from s * (q - z) only by m's fp16 rounding (at most half an
    fp16 ulp of s * z). Returns how many of the groups' minimums were rounded."""
    ref = dequant_ref(q, z, s)
    if symmetric:
        assert torch.equal(got, ref)
        return 0
    exact_min = -(s.float() * z.float())
    m16 = exact_min.half().float()
    n, k = q.shape
    diff = (got - ref).reshape(n, s.shape[1], -1)
    assert torch.equal(diff, (m16 - exact_min)[..., None].expand_as(diff))  # the min's rounding, nothing else
    _, e = torch.frexp(exact_min)  # |v| = m 2^e, m in [0.5, 1): an fp16 ulp is 2^(e - 11)
    assert ((m16 - exact_min).abs() <= torch.ldexp(torch.ones_like(exact_min), e - 12)).all()
    return int((m16 != exact_min).sum())


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_reference_dequantization_and_greedy_tokens(hf_float, tmp_path, case):
    qc, keep_attention = CASES[case]
    refs = write_quantized(hf_float, tmp_path / "src", dict(qc), keep_attention)
    out = import_checkpoint(tmp_path / "src", tmp_path / "imported")
    cfg = json.loads((out / "config.json").read_text())
    entry, symmetric = cfg["quantization"], qc["quant_method"] == "gptq" and qc["sym"]
    assert "quantization_config" not in cfg
    assert entry["mode"] == ("int4_sym" if symmetric else "int4_asym")
    assert (entry["group_size"], entry["keep_attention_fp16"]) == (qc.get("group_size", qc.get("q_group_size")),
                                                                   keep_attention)
    assert entry["quantized_tensors"] == len(refs) and entry["source"].startswith(qc["quant_method"])
    model = load_model(out, torch.float32, torch.device("cpu"))
    rounded = sum(check_against_reference(_ours(model, key), *r, symmetric) for key, r in refs.items())
    print(f"{case}: {rounded} group minimums rounded to fp16")
    reference = load_model(write_reference(hf_float, tmp_path / "ref", refs), torch.float32, torch.device("cpu"))
    prompt = [5, 17, 99, 3, 42, 200, 7, 64]
    got, got_logits = greedy(model, prompt)
    want, want_logits = greedy(reference, prompt)
    assert got == want
    if symmetric:  # bit-exact weights: the same float computation
        assert torch.equal(got_logits, want_logits)
    else:  # each group's min rounding (<= s / 128, one offset per group) moves these logits (std ~1.7) by ~0.014,
        # about twice what rounding the reference weights themselves to fp16 does (~0.006, measured)
        torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0.03)


def _permute_g_idx(state: dict) -> None:
    key = "model.layers.0.mlp.up_proj.g_idx"
    state[key] = state[key].flip(0).contiguous()  # act-order: groups no longer consecutive inputs


def _unquantize_one(state: dict) -> None:
    """One MLP linear left 16-bit among 4-bit ones: a mix our config's keep_attention_fp16 cannot say."""
    for leaf in ("qweight", "qzeros", "scales"):
        state.pop(f"model.layers.1.mlp.down_proj.{leaf}")
    state["model.layers.1.mlp.down_proj.weight"] = torch.zeros(128, 256)


REFUSALS = [  # (case, config changes, tensor edit, the message must name)
    ("gptq-asym-g32", {"desc_act": True}, _permute_g_idx, r"quantization_config\.desc_act: .*up_proj\.g_idx"),
    ("gptq-asym-g32", {"bits": 3}, None, r"quantization_config\.bits: 3"),
    ("gptq-asym-g32", {"group_size": -1}, None, r"quantization_config\.group_size: -1"),
    ("gptq-asym-g32", {"group_size": 48}, None, r"quantization_config\.group_size: 48"),
    ("gptq-asym-g32", {"checkpoint_format": "marlin"}, None, r"quantization_config\.checkpoint_format: 'marlin'"),
    ("gptq-asym-g32", {"sym": True}, None, r"quantization_config\.sym: true, but .*qzeros"),
    ("gptq-asym-g32", {"lm_head": True}, None, r"quantization_config\.lm_head"),
    ("gptq-asym-g32", {"quant_method": "bitsandbytes"}, None, r"quantization_config\.quant_method: 'bitsandbytes'"),
    ("awq-g128", {"version": "gemv"}, None, r"quantization_config\.version: 'gemv'"),
    ("awq-g128", {"version": "exllama"}, None, r"quantization_config\.version: 'exllama'"),
    ("awq-g128", {"zero_point": False}, None, r"quantization_config\.zero_point: False"),
    ("awq-g128", {"backend": "llm-awq"}, None, r"quantization_config\.backend: 'llm-awq'"),
    ("awq-g128", {"bits": 8}, None, r"quantization_config\.bits: 8"),
    ("awq-g128", {}, _unquantize_one, r"quantization_config\.modules_to_not_convert: model\.layers\.1\.mlp\.down_proj"),
    ("awq-g128", {}, lambda st: st.update({"model.layers.1.mlp.down_proj.weight": torch.zeros(128, 256)}),
     r"model\.layers\.1\.mlp\.down_proj: both \.weight and \.qweight"),
    ("awq-g128", {}, lambda st: st.update({"model.layers.0.mlp.up_proj.qweight":
                                           st["model.layers.0.mlp.up_proj.qweight"].to(torch.int64)}),
     r"model\.layers\.0\.mlp\.up_proj\.qweight: torch\.int64"),
]


@pytest.mark.parametrize("case,changes,edit,match", REFUSALS)
def test_what_cannot_be_loaded_is_refused_naming_the_field(hf_float, tmp_path, case, changes, edit, match):
    qc, keep_attention = CASES[case]
    src = tmp_path / "src"
    write_quantized(hf_float, src, dict(qc), keep_attention)
    if edit is not None:
        state = load_file(src / "model.safetensors")
        if case.startswith("awq") and "down_proj.weight" in match:  # a linear left 16-bit among 4-bit ones
            for leaf in ("qweight", "qzeros", "scales"):
                state.pop(f"model.layers.1.mlp.down_proj.{leaf}")
        edit(state)
        save_file(state, str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportError_, match=match):
        import_checkpoint(src, tmp_path / "out")


def test_unpack_follows_the_documented_nibble_orders():
    # AutoAWQ: nibble i holds column AWQ_ORDER[i]; put column j's own index there and read 0..7 back
    word = sum(AWQ_ORDER[i] << (4 * i) for i in range(8))
    codes, zeros = unpack_awq(_int32(torch.tensor([[word]])), _int32(torch.tensor([[word]])))
    assert codes.tolist() == [list(range(8))] and zeros.tolist() == [list(range(8))]
    # GPTQ: qweight nibble j of row r = input 8r + j; v1 zeros are nibble + 1 without wrapping (AutoGPTQ's
    # torch path), so a stored 15 (a zero of 0 that overflowed at packing) reads as 16, not 0
    w = _int32(torch.tensor([[sum(j << (4 * j) for j in range(8))]]))
    z = _int32(torch.tensor([[0xF << 28]]))
    codes, zeros = unpack_gptq(w, z, 1)
    assert codes[:, 0].tolist() == list(range(8)) and zeros.tolist() == [[1] * 7 + [16]]
    assert unpack_gptq(w, z, 0)[1].tolist() == [[0] * 7 + [15]]


def test_sharded_checkpoint_with_linears_across_shards(hf_float, tmp_path):
    qc, _ = CASES["gptq-asym-g32"]
    refs = write_quantized(hf_float, tmp_path / "one", dict(qc), False)
    state = load_file(tmp_path / "one" / "model.safetensors")
    src = tmp_path / "src"
    src.mkdir()
    names = {"model-00001-of-00002.safetensors": {k: v for k, v in state.items() if not k.endswith(".scales")},
             "model-00002-of-00002.safetensors": {k: v for k, v in state.items() if k.endswith(".scales")}}
    for name, part in names.items():  # every linear's scales sit in the other shard than its qweight
        save_file(part, str(src / name))
    index = {"weight_map": {k: name for name, part in names.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(tmp_path / "one" / "config.json", src / "config.json")
    out = import_checkpoint(src, tmp_path / "imported")
    written = {k: f.name for f in out.glob("*.safetensors") for k in load_file(f)}
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == written
    assert not any(k.endswith((".qweight", ".qzeros", ".scales", ".g_idx")) for k in written)
    model = load_model(out, torch.float32, torch.device("cpu"))
    for key, r in refs.items():
        check_against_reference(_ours(model, key), *r, symmetric=False)


def test_bfloat16_scales_that_float16_holds_become_float16():
    q, z, s = rtn(torch.randn(16, 64) * 0.1, 32, sym=False)
    got = to_ours(q.t(), z.t(), s.to(torch.bfloat16).t(), 32, symmetric=False)
    assert got["weight_scale"].dtype == got["weight_min"].dtype == torch.float16
    s16 = s.to(torch.bfloat16).half()  # the bf16 scales, held exactly in fp16
    back = dequantize_int4(got["weight"], got["weight_scale"], got["weight_min"])
    check_against_reference(back, q, z, s16, symmetric=False)


def test_cli_import_refusal_names_the_field(hf_float, tmp_path, capsys):
    from build_engines.__main__ import main

    qc, _ = CASES["gptq-asym-g32"]
    write_quantized(hf_float, tmp_path / "src", {**qc, "desc_act": True, "bits": 8}, False)
    assert main(["import", str(tmp_path / "src"), "--output", str(tmp_path / "out")]) == 2
    assert "quantization_config.bits: 8" in capsys.readouterr().err
