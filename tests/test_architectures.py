"""Every architecture the importer accepts, against transformers, on tiny random HF checkpoints made here.

Our engine's greedy tokens equal the argmax of HF's forward pass (the whole sequence, no KV cache) for 40
tokens of three prompts: in one prefill step, with chunked prefill, and under preemption. Config fields we
cannot compute exactly (a sliding window the served context reaches past, another rope type, ...) are refused
at load, naming the field. Random weights can make near-ties in the logits, which float rounding could break
either way: our float32 logprobs agree with HF's to within 1e-5 on these models, and the weights' SEED and STD
are chosen so that HF's top-2 logit margin is above EPS = 1e-4 at every compared token (the smallest is 6e-4);
the fixture asserts it, so another seed or shape that makes a near-tie fails there, not as a token mismatch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from build_engines.importer import SUPPORTED_ARCHITECTURES, import_checkpoint
from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from llmserve.model.llama import ModelArgs, check_served_context, rope_cos_sin

SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
WINDOW = 64  # prompts of up to 19 tokens + 40 new ones stay inside it
PROMPT_LENS, NEW_TOKENS, EPS, SEED, STD = (5, 11, 19), 40, 1e-4, 1, 0.2
# Three rope branches at head_dim 16 (wavelengths 6.3, 20, 63, ...): unscaled, smoothed and scaled.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
# name: (architecture, HF config kwargs, config.json fields rewritten after saving, serving knobs)
CASES: dict[str, tuple[str, dict, dict, dict]] = {
    "llama3_gqa": ("LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE, "num_hidden_layers": 3,
                                        "num_key_value_heads": 1}, {}, {}),
    "llama2_tied": ("LlamaForCausalLM", {"tie_word_embeddings": True}, {}, {}),  # SmolLM2's layout
    # use_sliding_window false: transformers ignores sliding_window whatever its value, and so do we.
    "qwen2_tied": ("Qwen2ForCausalLM", {"tie_word_embeddings": True}, {"sliding_window": 4}, {}),
    "mistral": ("MistralForCausalLM", {"sliding_window": None}, {}, {}),
    # A window the served context never reaches past: exact, so served.
    "mistral_window": ("MistralForCausalLM", {"sliding_window": WINDOW}, {}, {"max_model_len": WINDOW}),
    "qwen2_window": ("Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": WINDOW,
                                          "max_window_layers": 1}, {}, {"max_model_len": WINDOW}),
}
MODES = ("one_step", "chunked", "preempted")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls: thread hand-offs cost more than the math (100x on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_checkpoint(name: str, root: Path) -> Path:
    """A random HF checkpoint saved by transformers, with N(0, STD) weights (biases too) and norms near 1."""
    import transformers

    arch, kwargs, edits, _ = CASES[name]
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    torch.manual_seed(SEED)
    model = getattr(transformers, arch)(config_cls(**{**SHAPE, **kwargs}))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in pname else STD * torch.randn_like(p))
    src = root / "hf"
    model.save_pretrained(src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **edits}))
    return import_checkpoint(src, root / "imported")


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(SEED)
    return [torch.randint(3, SHAPE["vocab_size"], (n,), generator=g).tolist() for n in PROMPT_LENS]


def hf_greedy(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], float]:
    """HF's greedy continuation (argmax of a full forward pass per token) and its smallest top-2 margin."""
    ids, margin = list(prompt), math.inf
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            top = model(torch.tensor([ids])).logits[0, -1].topk(2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
    return ids[len(prompt):], margin


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Callable[[str], tuple[Path, list[list[int]]]]:
    """name -> (imported checkpoint, HF's greedy tokens per prompt), built once per module."""
    built: dict[str, tuple[Path, list[list[int]]]] = {}

    def get(name: str) -> tuple[Path, list[list[int]]]:
        if name not in built:
            from transformers import AutoModelForCausalLM

            ckpt = hf_checkpoint(name, tmp_path_factory.mktemp(name))
            hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()  # what we serve, read by HF
            refs = [hf_greedy(hf, p) for p in prompts()]
            low = min(m for _, m in refs)
            assert low > EPS, f"{name}: HF's top-2 margin {low:.2g} is a near-tie; choose another SEED or STD"
            built[name] = ckpt, [tokens for tokens, _ in refs]
        return built[name]

    return get


def mode_knobs(mode: str, config: dict) -> dict:
    if mode == "one_step":
        return {"kv_cache_memory_bytes": 1 << 20}
    if mode == "chunked":  # every prompt takes several steps
        return {"kv_cache_memory_bytes": 1 << 20, "max_num_tokens": 6, "kv_block_size": 4}
    # 20 blocks of 4 tokens: each sequence (at most 59 tokens) fits alone, the three (155) do not together.
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    block_bytes = 2 * config["num_hidden_layers"] * 4 * config["num_key_value_heads"] * head_dim * 4
    return {"kv_cache_memory_bytes": 20 * block_bytes, "kv_block_size": 4, "max_batch_size": 3}


def serve(checkpoint: Path, knobs: dict) -> tuple[TorchEngine, list[list[int]]]:
    engine = TorchEngine(ServingConfig.of(device="cpu", dtype="float32", **knobs), checkpoint)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    out: dict[str, list[int]] = {}
    for i, p in enumerate(prompts()):
        engine.add_request(EngineRequest(str(i), p, params))  # no EOS: every request runs NEW_TOKENS
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return engine, [out[str(i)] for i in range(len(PROMPT_LENS))]


def test_every_accepted_architecture_has_a_case():
    assert {arch for arch, *_ in CASES.values()} == SUPPORTED_ARCHITECTURES


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_greedy_tokens_equal_hf(checkpoints, name, mode):
    checkpoint, refs = checkpoints(name)
    config = json.loads((checkpoint / "config.json").read_text())
    engine, tokens = serve(checkpoint, {**CASES[name][3], **mode_knobs(mode, config)})
    assert tokens == refs
    stats = engine.stats()
    assert stats.kv_blocks_free == stats.kv_blocks_total
    assert (stats.preemptions > 0) == (mode == "preempted")


@pytest.mark.parametrize("name, field", [("mistral_window", "sliding_window"),
                                         ("qwen2_window", "use_sliding_window")])
def test_a_sliding_window_the_context_reaches_past_is_refused(checkpoints, name, field):
    checkpoint, _ = checkpoints(name)
    for knobs in ({"max_model_len": WINDOW + 1}, {}):  # unset: max_position_embeddings (128)
        with pytest.raises(ConfigError, match=rf"^{field}: .*Set max_model_len to {WINDOW} or less"):
            TorchEngine(ServingConfig.of(device="cpu", dtype="float32", kv_cache_memory_bytes=1 << 20, **knobs),
                        checkpoint)


def hf_config(**fields) -> dict:
    return {**SHAPE, "num_hidden_layers": 2, **fields}


@pytest.mark.parametrize("fields, window", [
    ({"model_type": "mistral"}, 4096),  # MistralConfig's default when config.json has no sliding_window
    ({"model_type": "mistral", "sliding_window": None}, None),
    ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 8}, None),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}, None),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, 8),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
      "layer_types": ["sliding_attention", "full_attention"], "max_window_layers": 2}, 8),  # layer_types rule
    ({"model_type": "llama", "sliding_window": 8}, None),  # LlamaAttention has no window
])
def test_the_sliding_window_follows_transformers(fields, window):
    args = ModelArgs.from_hf_config(hf_config(**fields))
    assert args.sliding_window == window
    if window is not None:
        check_served_context(args, window)
        with pytest.raises(ConfigError):
            check_served_context(args, window + 1)


@pytest.mark.parametrize("fields, match", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters: rope type 'yarn'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling: rope type 'dynamic'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "rope_parameters: .*low_freq_factor"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "rope_parameters: .*per layer type"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "gemma"}, "model_type"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_fields_we_do_not_compute_are_refused(fields, match):
    with pytest.raises(ConfigError, match=match):
        ModelArgs.from_hf_config(hf_config(**fields))


@pytest.mark.parametrize("rope", [
    LLAMA3_ROPE,
    {k: v for k, v in LLAMA3_ROPE.items() if k != "original_max_position_embeddings"},  # HF: max_position_embeddings
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
    {"rope_type": "default", "rope_theta": 500.0},
])
def test_rope_frequencies_equal_transformers(rope):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config(model_type="llama", rope_parameters=dict(rope))
    expected = LlamaRotaryEmbedding(LlamaConfig(**config)).inv_freq.double()
    cos, sin = rope_cos_sin(ModelArgs.from_hf_config(config), 2, torch.device("cpu"))
    assert torch.allclose(torch.atan2(sin[1], cos[1]).double(), expected, rtol=1e-5)  # position 1's angles


def test_a_tensor_the_model_would_drop_is_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    checkpoint, _ = checkpoints("llama2_tied")
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    state = load_file(checkpoint / "model.safetensors")
    state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(SHAPE["hidden_size"])
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="does not use.*o_proj.bias"):
        TorchEngine(ServingConfig.of(device="cpu", dtype="float32", kv_cache_memory_bytes=1 << 20), tmp_path)
