"""Recipes: every shipped YAML loads and says what it should; broken recipes fail naming the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from build_engines.recipe import (
    RECIPES_DIR,
    RecipeError,
    available_recipes,
    check_engine_supports,
    load_recipe,
    pytorch_support,
    recipe_from_dict,
)

ALL = ["bf16", "fp16", "fp8", "fp8_selective", "int4_awq", "int8_sq", "int8_sq_selective", "int8_wo"]


def raw(name: str) -> dict:
    return yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())


def test_the_eight_recipes_ship_and_load():
    assert available_recipes() == ALL
    for name in ALL:
        r = load_recipe(name)
        assert r.name == name
        assert (r.tp_size, r.pp_size) == (1, 1)
        assert r.limits.max_input_len < r.limits.max_seq_len


@pytest.mark.parametrize("name,precision,tool", [
    ("fp16", "fp16", "none"), ("bf16", "bf16", "none"), ("int8_sq", "int8_sq", "convert_checkpoint"),
    ("int8_wo", "int8_wo", "convert_checkpoint"), ("fp8", "fp8", "modelopt"), ("int4_awq", "int4_awq", "modelopt"),
    ("fp8_selective", "fp8", "convert_checkpoint"), ("int8_sq_selective", "int8_sq", "modelopt")])
def test_precision_and_tool(name, precision, tool):
    r = load_recipe(name)
    assert (r.precision, r.quantization.tool) == (precision, tool)


def test_quantization_settings_match_the_brief():
    sq = load_recipe("int8_sq").quantization
    assert (sq.smoothquant_alpha, sq.per_token, sq.per_channel) == (0.5, True, True)
    awq = load_recipe("int4_awq").quantization
    assert (awq.group_size, awq.symmetric) == (128, True)
    fp8 = load_recipe("fp8")
    assert fp8.quantization.kv_cache_dtype == "fp8" and fp8.min_compute_capability == (8, 9)
    assert load_recipe("int8_wo").quantization.weight_only_precision == "int8"
    assert load_recipe("bf16").dtype == "bfloat16" and load_recipe("fp16").dtype == "float16"
    assert load_recipe("fp8_selective").quantization.keep_fp16 == ["attention", "first_last_layers"]
    assert load_recipe("int8_sq_selective").quantization.keep_fp16 == ["attention"]
    assert load_recipe("fp8_selective").selective and not load_recipe("fp8").selective


@pytest.mark.parametrize("name,supported,weights", [
    ("fp16", True, "float16"), ("bf16", True, "bfloat16"), ("fp8", True, "fp8"), ("int8_wo", True, "int8_weight_only"),
    ("int8_sq", False, None), ("int4_awq", False, None), ("fp8_selective", False, None),
    ("int8_sq_selective", False, None)])
def test_pytorch_support(name, supported, weights):
    s = pytorch_support(load_recipe(name))
    assert (s.supported, s.weights) == (supported, weights)
    if not supported:
        assert s.reason


def test_smoothquant_is_refused_on_the_pytorch_engine_only():
    sq = load_recipe("int8_sq")
    check_engine_supports(sq, "tensorrtllm")
    with pytest.raises(RecipeError, match="pytorch.supported.*SmoothQuant.*tensorrtllm"):
        check_engine_supports(sq, "pytorch")
    check_engine_supports(load_recipe("fp8"), "pytorch")


def test_a_recipe_claiming_smoothquant_on_pytorch_is_invalid():
    r = raw("int8_sq")
    r["pytorch"] = {"supported": True, "weights": "fp8"}
    with pytest.raises(RecipeError, match="'int8_sq': pytorch.supported: INT8 SmoothQuant exists only"):
        recipe_from_dict(r)


def test_overrides_are_validated():
    r = load_recipe("fp16").with_overrides(tp_size=2, pp_size=2, max_batch_size=8)
    assert (r.tp_size, r.pp_size, r.world_size, r.limits.max_batch_size) == (2, 2, 4, 8)
    assert r.limits.max_seq_len == 4096  # untouched
    with pytest.raises(RecipeError, match="limits.max_input_len: must be < max_seq_len"):
        load_recipe("fp16").with_overrides(max_input_len=8192)
    with pytest.raises(RecipeError, match="parallel.tp_size: must be an integer >= 1"):
        load_recipe("fp16").with_overrides(tp_size=0)


def _broken(name: str, path: str, value) -> dict:
    r = copy.deepcopy(raw(name))
    *parents, last = path.split(".")
    node = r
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return r


@pytest.mark.parametrize("name,path,value,message", [
    ("fp16", "precision", "int3", "precision: expected one of"),
    ("fp16", "limits.max_seq_len", KeyError, "limits.max_seq_len: missing"),
    ("fp16", "limits.max_batch_size", 0, "limits.max_batch_size: must be an integer >= 1"),
    ("fp16", "limits.max_num_tokens", "many", "limits.max_num_tokens: must be an integer"),
    ("fp16", "limits.use_paged_context_fmha", "yes", "limits.use_paged_context_fmha: expected true/false"),
    ("fp16", "dtype", "bfloat16", "dtype: must be float16 for precision fp16"),
    ("fp16", "limits.colour", 1, "limits.colour: unknown field"),
    ("fp16", "quantization.tool", "modelopt", "quantization.tool: must be none"),
    ("int8_sq", "quantization.smoothquant_alpha", 1.5, "quantization.smoothquant_alpha: must be in"),
    ("int4_awq", "quantization.symmetric", False, "quantization.symmetric: .*no zero point"),
    ("int4_awq", "quantization.group_size", 96, "quantization.group_size: must be 64 or 128"),
    ("fp8", "quantization.qformat", "int8_sq", "quantization.qformat: must be 'fp8'"),
    ("fp8", "min_compute_capability", "8.0", "min_compute_capability: FP8 .*8.9"),
    ("fp8", "quantization.kv_cache_dtype", "int4", "quantization.kv_cache_dtype: expected fp8, int8"),
    ("int8_sq_selective", "quantization.kv_cache_dtype", "int8", "kv_cache_dtype: must be null when attention"),
    ("int8_sq_selective", "quantization.keep_fp16", ["mlp"], "keep_fp16: unknown part 'mlp'"),
    ("fp8_selective", "quantization.keep_fp16", ["attention"], "keep_fp16: the FP8 row-wise .*always keeps"),
    ("int8_wo", "pytorch.weights", "int4", "pytorch.weights: expected one of"),
    ("int8_sq", "pytorch.reason", "", "pytorch.reason: say why"),
])
def test_validation_names_the_field(name, path, value, message):
    with pytest.raises(RecipeError, match=message) as exc:
        recipe_from_dict(_broken(name, path, value))
    assert exc.value.recipe == name


def test_without_paged_context_fmha_a_prompt_must_fit_one_step():
    r = _broken("fp16", "limits.use_paged_context_fmha", False)
    r["limits"]["max_num_tokens"] = 1024
    with pytest.raises(RecipeError, match="limits.max_num_tokens: must be >= max_input_len"):
        recipe_from_dict(r)


def test_unknown_recipe_lists_the_known_ones(tmp_path):
    with pytest.raises(RecipeError, match="known: bf16, fp16, fp8"):
        load_recipe("fp4")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**raw("fp16"), "name": "mine"}))
    assert load_recipe(path).name == "mine"


def test_no_recipe_targets_volta():
    # issue 21 item 5: TensorRT-LLM 1.x dropped Volta; ModelOpt INT8 SmoothQuant needs Ampere
    for name in ("fp16", "int8_wo", "int8_sq", "int8_sq_selective"):
        assert load_recipe(name).min_compute_capability == (8, 0)
    raw = yaml.safe_load((RECIPES_DIR / "fp16.yaml").read_text())
    raw["min_compute_capability"] = "7.0"
    with pytest.raises(RecipeError, match="min_compute_capability: TensorRT-LLM 1.2 needs compute capability >= 8.0"):
        recipe_from_dict(raw)


# issue 21 item 5, checked against TensorRT-LLM's support matrix (Ampere is the oldest architecture listed; FP8 from
# Ada SM89) and ModelOpt's (INT8 SmoothQuant and INT4 AWQ: Ampere and later): see docs/tensorrt-llm.md
MIN_CC = {"fp16": (8, 0), "bf16": (8, 0), "int8_wo": (8, 0), "int8_sq": (8, 0), "int8_sq_selective": (8, 0),
          "int4_awq": (8, 0), "fp8": (8, 9), "fp8_selective": (8, 9)}


@pytest.mark.parametrize("name", ALL)
def test_minimum_compute_capability_per_recipe_follows_the_support_matrices(name):
    assert load_recipe(name).min_compute_capability == MIN_CC[name]


def test_a_real_build_under_another_tensorrt_llm_warns_that_the_server_will_refuse_it(tmp_path, monkeypatch, capsys):
    import json
    import types

    from build_engines import cli
    from build_engines.checks import HardwareFacts

    ck = tmp_path / "hf"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8,
        "num_key_value_heads": 8, "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 4096}))
    monkeypatch.setattr(cli, "detect_hardware", lambda: HardwareFacts(1, 80 * 1024**3, (9, 0), "NVIDIA H100"))
    monkeypatch.setattr(cli, "run_plan", lambda *a, **k: types.SimpleNamespace(
        tensorrt_version="10.13.3.9", tensorrt_llm_version="1.1.0", gpu_name="H100", compute_capability="9.0"))
    for version, warned in (("1.1.0", True), ("1.2.1", False)):
        monkeypatch.setattr(cli, "running_versions", lambda v=version: ("10.14.1.48", v))
        assert cli.main(["build", "--checkpoint", str(ck), "--recipe", "fp16", "--output", str(tmp_path / "o"),
                         "--trtllm-examples", "/opt/TensorRT-LLM/examples"]) == 0
        err = capsys.readouterr().err
        assert ("# warning: TensorRT-LLM 1.1.0 here; llmserve's TensorRT-LLM path is written for 1.2.x only" in err
                ) is warned and ("the server will refuse this engine" in err) is warned
