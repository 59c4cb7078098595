"""The checkpoint's config.json as the Llama-family model reads it (`ModelArgs`), with the refusals of what the model
would compute differently from transformers (each names the field), and the served context a sliding window allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.errors import ConfigError

MODEL_TYPES = ("llama", "mistral", "qwen2")  # a config.json without model_type (benchmarks, kernel tests) is Llama
# What rope_cos_sin computes, with the rope_parameters keys each type reads (transformers' modeling_rope_utils).
ROPE_KEYS = {"default": (), "linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    rope_scaling: dict | None = None
    sliding_window: int | None = None  # the window of the layers that slide; None: every layer attends fully
    sliding_field: str = "sliding_window"  # the config.json field that turned it on, for the refusal

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelArgs:
        """Refuses (ConfigError, naming the field) what the model would compute differently from transformers."""
        kind = cfg.get("model_type") or "llama"
        _refuse_unsupported(cfg, kind)
        theta, scaling = _rope(cfg)
        window, window_field = _sliding_window(cfg, kind)
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=kind == "qwen2",  # Qwen2Attention: q/k/v biases always, o_proj none
            rope_scaling=scaling,
            sliding_window=window,
            sliding_field=window_field,
        )


def _refuse_unsupported(cfg: dict, kind: str) -> None:
    """Fields of config.json that change what transformers computes and that this model does not implement."""
    if kind not in MODEL_TYPES:
        raise ConfigError(f"model_type: {kind!r} is not a Llama-family model we implement ({', '.join(MODEL_TYPES)})")
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):  # both are SiLU in transformers' ACT2FN
        raise ConfigError(f"hidden_act: {cfg['hidden_act']!r} is not implemented; our MLP is silu(gate) * up")
    # modeling_llama.py: attention_bias biases o_proj as well as q/k/v, mlp_bias all three MLP projections; our
    # model has neither (Mistral and Qwen2 ignore both fields).
    for name, where in (("attention_bias", "o_proj"), ("mlp_bias", "gate/up/down_proj")):
        if kind == "llama" and cfg.get(name):
            raise ConfigError(f"{name}: true puts a bias on {where}, which our model does not implement; refusing "
                              "the checkpoint rather than dropping its biases")
    if cfg.get("quantization_config"):
        raise ConfigError("quantization_config: checkpoints quantized for transformers are not loaded as they are; "
                          "`python -m build_engines import` repacks AutoAWQ GEMM / GPTQ 4-bit ones into our int4 "
                          "format, or import the unquantized checkpoint (llmserve/model/quantize.py quantizes it)")


def _rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling parameters or None), resolved as transformers' convert_rope_params_to_dict and
    standardize_rope_params do: a legacy rope_scaling wins over rope_parameters, the dict's rope_theta over
    the flat one, and llama3's original_max_position_embeddings defaults to max_position_embeddings."""
    field = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    rope = dict(cfg.get(field) or {})
    theta = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if any(isinstance(v, dict) for v in rope.values()):
        raise ConfigError(f"{field}: rope parameters per layer type are not implemented")
    if kind not in ROPE_KEYS:
        raise ConfigError(f"{field}: rope type {kind!r} is not implemented (we compute {', '.join(ROPE_KEYS)}); "
                          "another rope would silently change every answer")
    if kind == "default":
        return theta, None  # transformers' default rope of these models ignores partial_rotary_factor
    if cfg.get("original_max_position_embeddings"):
        rope["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    rope.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    missing = [k for k in ROPE_KEYS[kind] if rope.get(k) is None]
    if missing:
        raise ConfigError(f"{field}: rope type {kind!r} needs {', '.join(missing)}")
    if rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{field}: partial_rotary_factor != 1 is not implemented")
    return theta, {**rope, "rope_type": kind}


def _sliding_window(cfg: dict, kind: str) -> tuple[int | None, str]:
    """The attention window as transformers applies it (None: none), and the field that turned it on."""
    if kind == "mistral":
        # configuration_mistral.py: sliding_window defaults to 4096 when absent; modeling_mistral.py applies it
        # to every layer (create_sliding_window_causal_mask unless config.sliding_window is None).
        return cfg.get("sliding_window", 4096), "sliding_window"
    if kind == "qwen2" and cfg.get("use_sliding_window"):
        # configuration_qwen2.py __post_init__: sliding_window counts only with use_sliding_window, and then on
        # the layers layer_types marks "sliding_attention" (by default those >= max_window_layers, 28).
        window = cfg.get("sliding_window", 4096)
        first = cfg.get("max_window_layers", 28)
        types = cfg.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                           for i in range(cfg["num_hidden_layers"])]
        if window is not None and "sliding_attention" in types:
            return window, "use_sliding_window"
    return None, "sliding_window"


def check_served_context(args: ModelArgs, max_model_len: int) -> None:
    """Our paged attention attends to the whole context. A sliding window of W tokens (transformers'
    sliding_window_overlay: key > query - W) cuts nothing while no sequence is longer than W, so a served
    context of at most W tokens is exact; a longer one is refused."""
    w = args.sliding_window
    if w is not None and max_model_len > w:
        setting = ("use_sliding_window=true, " if args.sliding_field == "use_sliding_window" else "") + \
            f"sliding_window={w}"
        raise ConfigError(f"{args.sliding_field}: this checkpoint's sliding-window layers attend only to the last "
                          f"{w} tokens ({setting}), which our paged attention does not implement, and the served "
                          f"context is {max_model_len} tokens (max_model_len, or its default when it is "
                          f"unset): answers past token {w} would differ from the model's. Set max_model_len to {w} "
                          "or less to serve it exactly.")
