"""4-bit HF checkpoints made by others (AutoAWQ GEMM, GPTQ) repacked at import into llmserve's int4 group format
(llmserve/model/int4.py), so they load through the same `Int4Linear` path and kernels as our own int4 models.

Layouts read (W is the [out N, in K] weight; g the group size; words are int32, nibble i = bits 4i..4i+3):
- AutoAWQ GEMM (quant_method "awq", version "gemm"): qweight [K, N/8], qzeros [K/g, N/8], scales [K/g, N].
  Nibble i of word c holds output column 8c + AWQ_ORDER[i], AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7], in qweight
  and qzeros alike; w = (q - z) * s. Source: casper-hansen/AutoAWQ awq/modules/linear/gemm.py
  (WQLinear_GEMM.from_linear, the packing loops) and awq/utils/packing_utils.py (AWQ_REVERSE_ORDER,
  unpack_awq, reverse_awq_order, dequantize_gemm); vllm-project/vllm
  vllm/model_executor/layers/quantization/awq_triton.py unpacks column j from nibble [0, 4, 1, 5, 2, 6, 3, 7][j] too.
- GPTQ (quant_method "gptq"): qweight [K/8, N], nibble j of row r = input 8r + j (sequential along K); qzeros
  [K/g, N/8], nibble j of word c = output 8c + j; scales [K/g, N]; g_idx [K]. checkpoint_format "gptq" (v1, the
  default) stores z - 1: the reference adds 1 to each masked nibble without wrapping (z = nibble + 1, 1..16);
  "gptq_v2" stores z itself. w = s * (q - z). Sources: AutoGPTQ/AutoGPTQ
  auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py (pack: `zeros -= 1`; forward's torch path:
  `bitwise_and(zeros, 15)`, `zeros + 1`, `scales * (weight - zeros)`), and ModelCloud/GPTQModel
  gptqmodel/utils/model.py (convert_gptq_v1_to_v2_format_module: v2 = v1 + 1 per nibble).

Mapping to ours (codes 0..15 kept as they are, only their order changes):
- GPTQ sym (z = 8 everywhere): "int4_sym", w = s * (q - 8): bit for bit.
- AWQ (zero_point) and GPTQ sym=false: "int4_asym", w = s * q + m with m = -s * z computed in float32 and
  rounded once to the scale's 16-bit type. s * z needs up to 15 significant bits and float16 keeps 11, so m
  may be rounded: |error| <= half an fp16 ulp of s * z <= 2^-11 * 16 s = s / 128 (under 0.8% of a step), the
  same size as the reference's own fp16 rounding (AutoAWQ's dequantize_gemm multiplies in float16, rounding
  each weight by up to half an ulp of s * (q - z)). The float32 sum s * q + m is then exact. Keeping m exact
  would need float32 minimums or a third zero-point variant in the kernels: not worth it for that error.
  bfloat16 scales that float16 holds exactly become float16 first, so their min rounds to 11 bits, not 8.
Refused, naming the field: bits != 4, group sizes other than 32/64/128 (-1 too), desc_act with a non-trivial
g_idx, AWQ versions other than gemm (gemv, gemv_fast, marlin, exllama, ipex pack differently), zero_point false,
backends other than autoawq (llm-awq interleaves differently), checkpoint formats other than gptq/gptq_v2,
a quantized lm_head, per-module `dynamic` overrides, and linears quantized in a mix our config cannot say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmserve.model.int4 import GROUP_SIZES, SCALE_DTYPES, pack

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # output column j of a word sits in nibble AWQ_REVERSE_ORDER[j]
SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
QUANT_LEAVES = ("qweight", "qzeros", "scales", "g_idx")


class HfQuantError(ValueError):
    """A quantized HF checkpoint we cannot repack exactly; the message names the field or tensor."""


@dataclass(frozen=True)
class Spec:
    method: str  # "awq" | "gptq"
    group_size: int
    symmetric: bool
    zero_offset: int  # added to each stored zero nibble (GPTQ v1: 1)
    desc_act: bool
    source: str  # the config entry's "source": e.g. "awq:gemm", "gptq:gptq"


def _field(qc: dict, *names: str, default=None) -> tuple[str, object]:
    """(name, value) of the first of `names` present, else of the first (AutoAWQ's older configs say w_bit /
    q_group_size for bits / group_size)."""
    return next(((n, qc[n]) for n in names if n in qc), (names[0], default))


def _need(ok: bool, field: str, value, want: str) -> None:
    if not ok:
        raise HfQuantError(f"quantization_config.{field}: {value!r} cannot be loaded; supported: {want}")


def read_spec(qc: dict) -> Spec:
    """Checks config.json's quantization_config before any tensor is read."""
    method = str(qc.get("quant_method", "")).lower()
    _need(method in ("awq", "gptq"), "quant_method", qc.get("quant_method"), "awq (AutoAWQ GEMM), gptq")
    name, bits = _field(qc, "bits", "w_bit")
    _need(bits == 4, name, bits, "4")
    name, group = _field(qc, "group_size", "q_group_size")
    _need(group in GROUP_SIZES, name, group, " / ".join(map(str, GROUP_SIZES)))
    if method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        _need(version == "gemm", "version", qc.get("version"), "gemm (AutoAWQ's GEMM packing)")
        _need(qc.get("zero_point", True) is True, "zero_point", qc.get("zero_point"), "true")
        backend = str(qc.get("backend", "autoawq")).lower()
        _need(backend == "autoawq", "backend", qc.get("backend"), "autoawq (llm-awq packs differently)")
        return Spec("awq", group, False, 0, False, "awq:gemm")
    name, fmt = _field(qc, "checkpoint_format", "format", default="gptq")
    fmt = str(fmt).lower()
    _need(fmt in ("gptq", "gptq_v2"), name, fmt, "gptq, gptq_v2")
    _need(not qc.get("is_marlin_format"), "is_marlin_format", qc.get("is_marlin_format"), "false")
    _need(not qc.get("lm_head"), "lm_head", qc.get("lm_head"), "false (a quantized lm_head)")
    _need(not qc.get("dynamic"), "dynamic", qc.get("dynamic"), "none (per-module overrides)")
    _need(str(qc.get("pack_dtype", "int32")).removeprefix("torch.") == "int32", "pack_dtype", qc.get("pack_dtype"),
          "int32")
    sym = qc.get("sym", True)
    _need(isinstance(sym, bool), "sym", sym, "true, false")
    return Spec("gptq", group, sym, 1 if fmt == "gptq" else 0, bool(qc.get("desc_act", False)), f"gptq:{fmt}")


def _nibbles(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their 8 nibbles (0..15), nibble i expanded next to `dim` and merged into it."""
    w = words.to(torch.int32).unsqueeze(dim + 1)
    shape = [1] * w.dim()
    shape[dim + 1] = 8
    n = (w >> SHIFTS.reshape(shape)) & 15  # arithmetic shift, then the mask: negative words are fine
    return n.flatten(dim, dim + 1)


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAWQ GEMM words -> codes [K, N], zeros [K/g, N], both in natural column order."""
    def natural(t: torch.Tensor) -> torch.Tensor:
        n = _nibbles(t, 1).reshape(t.shape[0], -1, 8)
        return n[:, :, AWQ_REVERSE_ORDER].reshape(t.shape[0], -1)
    return natural(qweight), natural(qzeros)


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, zero_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ words -> codes [K, N] (qweight packs along K) and zeros [K/g, N] (qzeros packs along N)."""
    return _nibbles(qweight, 0), _nibbles(qzeros, 1) + zero_offset


def to_ours(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int,
            symmetric: bool) -> dict[str, torch.Tensor]:
    """codes [K, N], zeros and scales [K/g, N] (w = s * (q - z)) -> our tensors for W [N, K]."""
    if not symmetric and scales.dtype == torch.bfloat16 and torch.equal(scales.half().to(scales.dtype), scales):
        scales = scales.half()  # same scales, and the min rounds to 11 significant bits rather than bf16's 8
    out = {"weight": pack(codes.t().contiguous(), group), "weight_scale": scales.t().contiguous()}
    if not symmetric:
        m = -(scales.float() * zeros.float())  # exact in float32: an 11-bit scale times a 5-bit integer
        out["weight_min"] = m.to(scales.dtype).t().contiguous()  # the one rounding (module doc)
    return out


class Shards:
    """Tensors of a directory's *.safetensors files by name, each read when asked for (one shard's pages)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.where: dict[str, Path] = {}
        for f in files:
            with safe_open(f, framework="pt") as h:
                self.where.update(dict.fromkeys(h.keys(), f))

    def get(self, key: str) -> torch.Tensor:
        if key not in self.where:
            raise HfQuantError(f"{key}: missing from the checkpoint")
        with safe_open(self.where[key], framework="pt") as h:
            return h.get_tensor(key)


def _keep_attention(linears: set[str], shards: Shards) -> bool:
    """Whether attention stayed 16-bit (our keep_attention_fp16); refuses any other mix of quantized linears."""
    decoder = {k.removesuffix(".weight") for k in shards.where if k.endswith(".weight")}
    both = sorted(decoder & linears)
    if both:
        raise HfQuantError(f"{both[0]}: both .weight and .qweight; which one the checkpoint means is unclear")
    decoder = {k for k in decoder | linears if k.rpartition(".")[2] in ATTENTION + MLP and ".layers." in k}
    stray = sorted(linears - decoder)
    if stray:
        raise HfQuantError(f"quantization_config: {stray[0]} is quantized; only decoder linears can be "
                           "(a quantized lm_head or embedding is not loaded)")
    plain = decoder - linears
    if not plain:
        return False
    if {k.rpartition(".")[2] for k in plain} <= set(ATTENTION) and \
            {k for k in decoder if k.rpartition(".")[2] in ATTENTION} == plain:
        return True
    raise HfQuantError(f"quantization_config.modules_to_not_convert: {sorted(plain)[0]} is left unquantized; "
                       "we load all decoder linears in 4 bits, or all but attention's")


def _check_shapes(base: str, t: dict[str, torch.Tensor], spec: Spec) -> None:
    """The documented shapes and dtypes, so an unknown packing fails here rather than as wrong weights."""
    for leaf in ("qweight", "qzeros"):
        if t[leaf].dtype != torch.int32 or t[leaf].dim() != 2:
            raise HfQuantError(f"{base}.{leaf}: {t[leaf].dtype} {tuple(t[leaf].shape)}; the {spec.source} "
                               "packing is 2-D int32")
    if t["scales"].dtype not in SCALE_DTYPES:
        raise HfQuantError(f"{base}.scales: dtype {t['scales'].dtype}; expected float16 or bfloat16")
    rows, cols = t["qweight"].shape
    k, n = (8 * rows, cols) if spec.method == "gptq" else (rows, 8 * cols)
    g = spec.group_size
    want = {"qzeros": (k // g, n // 8), "scales": (k // g, n)}
    for leaf, shape in want.items():
        if tuple(t[leaf].shape) != shape or k % g:
            raise HfQuantError(f"{base}.{leaf}: shape {tuple(t[leaf].shape)}, expected {shape} for "
                               f"quantization_config.group_size {g} ({spec.source} packing)")


def convert_linear(base: str, shards: Shards, spec: Spec) -> dict[str, torch.Tensor]:
    """One quantized linear (`base`.qweight, ...) -> {`base`.weight, .weight_scale[, .weight_min]}."""
    t = {leaf: shards.get(f"{base}.{leaf}") for leaf in ("qweight", "qzeros", "scales")}
    _check_shapes(base, t, spec)
    if spec.method == "awq":
        codes, zeros = unpack_awq(t["qweight"], t["qzeros"])
    else:
        codes, zeros = unpack_gptq(t["qweight"], t["qzeros"], spec.zero_offset)
        _check_g_idx(base, shards, spec, codes.shape[0])
        if spec.symmetric and not bool((zeros == 8).all()):
            raise HfQuantError(f"quantization_config.sym: true, but {base}.qzeros holds zero points other than 8")
    out = to_ours(codes, zeros, t["scales"], spec.group_size, spec.symmetric)
    if "weight_min" in out and not bool(out["weight_min"].isfinite().all()):
        raise HfQuantError(f"{base}.scales: -scale * zero overflows {t['scales'].dtype}")
    return {f"{base}.{k}": v for k, v in out.items()}


def _check_g_idx(base: str, shards: Shards, spec: Spec, k: int) -> None:
    """Groups must be consecutive inputs: g_idx[i] = i // group_size (desc_act reorders them otherwise)."""
    key = f"{base}.g_idx"
    if key not in shards.where:
        return  # optional when desc_act is false
    trivial = torch.arange(k, dtype=torch.int64) // spec.group_size
    if not torch.equal(shards.get(key).to(torch.int64), trivial):
        field = "desc_act" if spec.desc_act else "group_size"
        raise HfQuantError(f"quantization_config.{field}: {key} is not i // {spec.group_size} (act-order groups); "
                           "only desc_act false (consecutive groups) can be loaded")


def convert_checkpoint(src: Path, out: Path, config: dict) -> dict:
    """Writes `out`'s *.safetensors (one per source shard, same names) and config.json with our "quantization"
    entry instead of quantization_config; returns that entry. Shard by shard: one shard in memory at a time."""
    spec = read_spec(config["quantization_config"])
    shards = Shards(sorted(src.glob("*.safetensors")))
    linears = {k.removesuffix(".qweight") for k in shards.where if k.endswith(".qweight")}
    if not linears:
        raise HfQuantError("quantization_config: set, but no tensor ends in .qweight")
    keep_attention = _keep_attention(linears, shards)
    mode = "int4_sym" if spec.symmetric else "int4_asym"
    weight_map: dict[str, str] = {}
    for f in shards.files:
        tensors = _convert_shard(f, shards, linears, spec)
        save_file(tensors, str(out / f.name), metadata={"format": "pt", "llmserve_quantization": mode,
                                                        "llmserve_source": spec.source})
        weight_map.update(dict.fromkeys(tensors, f.name))
    if list(src.glob("*.safetensors.index.json")):
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    entry = {"mode": mode, "group_size": spec.group_size,
             "keep_attention_fp16": keep_attention, "weight_scale": "per_group", "activation_scale": "none",
             "quantized_tensors": len(linears), "source": spec.source}
    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    cfg["quantization"] = entry
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return entry


def _convert_shard(f: Path, shards: Shards, linears: set[str], spec: Spec) -> dict[str, torch.Tensor]:
    """A shard's tensors: each linear converted where its qweight lies; the rest (biases too) as they are."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(f, framework="pt") as h:
        for key in h.keys():
            base, _, leaf = key.rpartition(".")
            if base in linears and leaf in QUANT_LEAVES:
                if leaf == "qweight":
                    tensors.update(convert_linear(base, shards, spec))
            else:
                tensors[key] = h.get_tensor(key)
    return tensors
