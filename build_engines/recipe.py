"""Build recipes: one YAML file per precision under build_engines/recipes/, loaded into dataclasses.

Every validation error names the recipe and the field (`RecipeError`), because a recipe is hand-edited
and a bare KeyError three steps into a one-hour quantization run is the failure we want to avoid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"

PRECISIONS = ("fp16", "bf16", "int8_sq", "int8_wo", "fp8", "int4_awq")
TOOLS = ("none", "convert_checkpoint", "modelopt")
# quantize.py --qformat choices we use (examples/quantization/quantize.py)
QFORMATS = {"fp8": "fp8", "int8_sq": "int8_sq", "int4_awq": "int4_awq"}
KEEP_FP16_PARTS = ("attention", "first_last_layers")
PYTORCH_WEIGHTS = ("float16", "bfloat16", "fp8", "int8_weight_only")


class RecipeError(ValueError):
    def __init__(self, recipe: str, field_name: str, reason: str):
        super().__init__(f"recipe {recipe!r}: {field_name}: {reason}")
        self.recipe = recipe
        self.field = field_name


@dataclass
class Quantization:
    tool: str = "none"
    qformat: str | None = None  # ModelOpt quantize.py --qformat
    kv_cache_dtype: str | None = None  # "fp8" | "int8" | None (= dtype)
    calib_size: int | None = None
    calib_dataset: str | None = None  # None: the script's default (downloads from the HF hub)
    smoothquant_alpha: float | None = None
    per_token: bool = False
    per_channel: bool = False
    weight_only_precision: str | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    fp8_rowwise: bool = False
    keep_fp16: list[str] = field(default_factory=list)  # the guide's selective quantization


@dataclass
class Limits:
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    use_paged_context_fmha: bool = True


@dataclass
class PytorchSupport:
    supported: bool
    weights: str | None = None  # how our PyTorch engine would hold the weights
    reason: str = ""
    note: str = ""


@dataclass
class Recipe:
    name: str
    description: str
    precision: str
    dtype: str
    quantization: Quantization
    tp_size: int
    pp_size: int
    limits: Limits
    min_compute_capability: tuple[int, int]
    pytorch: PytorchSupport

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def selective(self) -> bool:
        return bool(self.quantization.keep_fp16)

    def with_overrides(self, tp_size: int | None = None, pp_size: int | None = None, **limits: Any) -> Recipe:
        """CLI overrides; None means keep. The result is validated again."""
        new_limits = dataclasses.replace(self.limits, **{k: v for k, v in limits.items() if v is not None})
        out = dataclasses.replace(self, limits=new_limits,
                                  tp_size=self.tp_size if tp_size is None else tp_size,
                                  pp_size=self.pp_size if pp_size is None else pp_size)
        validate(out)
        return out


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(str(name_or_path), "name", f"no such recipe file; known: {', '.join(available_recipes())}")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return recipe_from_dict(raw, source=path.stem)


def _section(recipe: str, raw: dict, key: str, cls: type, required: bool = True) -> dict:
    value = raw.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(recipe, key, f"expected a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for k in value:
        if k not in known:
            raise RecipeError(recipe, f"{key}.{k}", f"unknown field; known: {', '.join(sorted(known))}")
    return value


def recipe_from_dict(raw: Any, source: str = "<dict>") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(source, "<top>", "expected a YAML mapping")
    name = raw.get("name", source)
    known = {"name", "description", "precision", "dtype", "quantization", "parallel", "limits",
             "min_compute_capability", "pytorch"}
    for k in raw:
        if k not in known:
            raise RecipeError(name, k, f"unknown field; known: {', '.join(sorted(known))}")
    for k in ("precision", "dtype", "limits", "pytorch"):
        if k not in raw:
            raise RecipeError(name, k, "missing")
    limits_raw = _section(name, raw, "limits", Limits)
    for f in dataclasses.fields(Limits):
        if f.name not in limits_raw and f.name != "use_paged_context_fmha":
            raise RecipeError(name, f"limits.{f.name}", "missing")
    parallel = raw.get("parallel") or {}
    for k in parallel:
        if k not in ("tp_size", "pp_size"):
            raise RecipeError(name, f"parallel.{k}", "unknown field; known: pp_size, tp_size")
    cc = str(raw.get("min_compute_capability", "8.0"))
    try:
        major, minor = (int(x) for x in cc.split("."))
    except ValueError:
        raise RecipeError(name, "min_compute_capability", f"expected 'major.minor', got {cc!r}") from None
    recipe = Recipe(
        name=name, description=str(raw.get("description", "")), precision=raw["precision"], dtype=raw["dtype"],
        quantization=Quantization(**_section(name, raw, "quantization", Quantization, required=False)),
        tp_size=parallel.get("tp_size", 1), pp_size=parallel.get("pp_size", 1),
        limits=Limits(**limits_raw), min_compute_capability=(major, minor),
        pytorch=PytorchSupport(**_section(name, raw, "pytorch", PytorchSupport)),
    )
    validate(recipe)
    return recipe


def validate(r: Recipe) -> None:
    def check(ok: bool, field_name: str, reason: str) -> None:
        if not ok:
            raise RecipeError(r.name, field_name, reason)

    check(r.precision in PRECISIONS, "precision", f"expected one of {', '.join(PRECISIONS)}, got {r.precision!r}")
    check(r.dtype in ("float16", "bfloat16"), "dtype", f"expected float16 or bfloat16, got {r.dtype!r}")
    _validate_quantization(r, check)
    _validate_selective(r, check)
    _validate_hardware(r, check)
    _validate_limits(r.limits, check)
    _validate_pytorch(r, check)


def _validate_quantization(r: Recipe, check: Any) -> None:
    """The quantization section against the precision: which tool can make it and with which of its options."""
    q = r.quantization
    if r.precision in ("fp16", "bf16"):
        want = "float16" if r.precision == "fp16" else "bfloat16"
        check(r.dtype == want, "dtype", f"must be {want} for precision {r.precision}")
        check(q.tool == "none", "quantization.tool", f"must be none for precision {r.precision}")
    check(q.tool in TOOLS, "quantization.tool", f"expected one of {', '.join(TOOLS)}, got {q.tool!r}")
    if q.tool == "modelopt":
        check(QFORMATS.get(r.precision) == q.qformat, "quantization.qformat",
              f"must be {QFORMATS.get(r.precision)!r} for precision {r.precision} (ModelOpt supports "
              f"{', '.join(QFORMATS)})")
    elif q.tool == "convert_checkpoint":
        check(r.precision in ("int8_sq", "int8_wo", "fp8"), "quantization.tool",
              f"convert_checkpoint.py cannot produce {r.precision}; use modelopt")
        check(q.qformat is None, "quantization.qformat", "only for tool modelopt")
    if r.precision == "int8_sq" and q.tool == "convert_checkpoint":
        a = q.smoothquant_alpha
        check(a is not None and 0.0 <= a <= 1.0, "quantization.smoothquant_alpha", f"must be in [0, 1], got {a}")
    else:
        check(q.smoothquant_alpha is None, "quantization.smoothquant_alpha", "only for int8_sq via convert_checkpoint")
    if r.precision == "int8_wo":
        check(q.weight_only_precision == "int8", "quantization.weight_only_precision", "must be int8")
    if r.precision == "fp8" and q.tool == "convert_checkpoint":
        check(q.fp8_rowwise, "quantization.fp8_rowwise", "convert_checkpoint FP8 here is the row-wise recipe: true")
    if r.precision == "int4_awq":
        check(q.group_size in (64, 128), "quantization.group_size", f"must be 64 or 128, got {q.group_size}")
        check(q.symmetric is True, "quantization.symmetric", "TRT-LLM W4A16_AWQ has no zero point: must be true")
    check(q.kv_cache_dtype in (None, "fp8", "int8"), "quantization.kv_cache_dtype",
          f"expected fp8, int8 or null, got {q.kv_cache_dtype!r}")
    if q.kv_cache_dtype == "fp8":
        check(r.min_compute_capability >= (8, 9), "min_compute_capability", "FP8 KV cache needs >= 8.9")
    if q.calib_size is not None:
        check(q.calib_size >= 1, "quantization.calib_size", f"must be >= 1, got {q.calib_size}")


def _validate_hardware(r: Recipe, check: Any) -> None:
    """The compute capability the precision needs, and the parallel sizes."""
    if r.precision == "fp8":
        check(r.min_compute_capability >= (8, 9), "min_compute_capability", "FP8 needs compute capability >= 8.9")
    # TensorRT-LLM 1.x builds no Volta (7.x) engines, and ModelOpt's INT8 SmoothQuant needs Ampere.
    check(r.min_compute_capability >= (8, 0), "min_compute_capability",
          f"TensorRT-LLM 1.2 needs compute capability >= 8.0 (Ampere), got {r.min_compute_capability}")
    for name in ("tp_size", "pp_size"):
        v = getattr(r, name)
        check(isinstance(v, int) and v >= 1, f"parallel.{name}", f"must be an integer >= 1, got {v!r}")


def _validate_limits(lim: Limits, check: Any) -> None:
    """Positive integer limits, room for output after the longest prompt, and a prompt that fits a step unchunked."""
    for f in dataclasses.fields(Limits):
        v = getattr(lim, f.name)
        if f.name == "use_paged_context_fmha":
            check(isinstance(v, bool), "limits.use_paged_context_fmha", f"expected true/false, got {v!r}")
        else:
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"limits.{f.name}",
                  f"must be an integer >= 1, got {v!r}")
    check(lim.max_input_len < lim.max_seq_len, "limits.max_input_len",
          f"must be < max_seq_len ({lim.max_seq_len}) to leave room for output, got {lim.max_input_len}")
    # Without paged context FMHA the context cannot be chunked, so one prompt must fit one step.
    check(lim.use_paged_context_fmha or lim.max_num_tokens >= lim.max_input_len, "limits.max_num_tokens",
          f"must be >= max_input_len ({lim.max_input_len}) when use_paged_context_fmha is false")


def _validate_pytorch(r: Recipe, check: Any) -> None:
    """Whether our PyTorch engine can serve the recipe's weights, or why not."""
    p = r.pytorch
    if p.supported:
        check(p.weights in PYTORCH_WEIGHTS, "pytorch.weights", f"expected one of {', '.join(PYTORCH_WEIGHTS)}")
        check(r.precision != "int8_sq", "pytorch.supported",
              "INT8 SmoothQuant exists only on the TensorRT-LLM engine path; must be false")
        check(not r.selective, "pytorch.supported", "our PyTorch engine cannot keep layers in FP16; must be false")
    else:
        check(bool(p.reason), "pytorch.reason", "say why the PyTorch engine cannot use this format")


def _validate_selective(r: Recipe, check: Any) -> None:
    q = r.quantization
    if not q.keep_fp16:
        return
    for part in q.keep_fp16:
        check(part in KEEP_FP16_PARTS, "quantization.keep_fp16", f"unknown part {part!r}; known: attention, "
              "first_last_layers")
    check(r.precision in ("fp8", "int8_sq"), "quantization.keep_fp16", "selective quantization is for fp8/int8_sq")
    # KV cache is written by the attention layers we keep in FP16, and ModelOpt's KV config would re-enable
    # the k/v output quantizers we disable.
    check(q.kv_cache_dtype is None, "quantization.kv_cache_dtype", "must be null when attention stays FP16")
    if q.tool == "convert_checkpoint":
        check(sorted(q.keep_fp16) == ["attention", "first_last_layers"], "quantization.keep_fp16",
              "the FP8 row-wise (Meta) recipe always keeps [attention, first_last_layers]")
    else:
        check(q.keep_fp16 == ["attention"], "quantization.keep_fp16", "the ModelOpt path supports [attention] only")


def pytorch_support(recipe: Recipe) -> PytorchSupport:
    """Whether (and as what) our PyTorch engine can serve this recipe's format."""
    return recipe.pytorch


def check_engine_supports(recipe: Recipe, engine: str) -> None:
    """Refuses a recipe on an engine that cannot run it (e.g. SmoothQuant on the PyTorch engine)."""
    if engine == "tensorrtllm":
        return
    if engine != "pytorch":
        raise RecipeError(recipe.name, "engine", f"expected pytorch or tensorrtllm, got {engine!r}")
    if not recipe.pytorch.supported:
        raise RecipeError(recipe.name, "pytorch.supported",
                          f"not servable by the PyTorch engine: {recipe.pytorch.reason} Use engine=tensorrtllm.")
