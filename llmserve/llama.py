"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

One file, read top to bottom: config, rotary embedding, attention, MLP, the stack, and the weight loader.
All tokens of a step (prefills and decodes of many sequences) run as one flat [T] batch; attention is the
only layer that needs to know which token belongs to which sequence, through `AttentionMetadata`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmserve import attention
from llmserve.attention import AttentionMetadata


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

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelArgs:
        # transformers 5 moved rope_theta/rope_scaling into rope_parameters; older checkpoints have both flat.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
        scaling = rope if rope.get("rope_type", rope.get("type", "default")) not in ("default", None) else None
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
            rope_theta=float(theta),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)),
            rope_scaling=scaling,
        )


def rope_cos_sin(args: ModelArgs, max_pos: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    s = args.rope_scaling
    if s and s.get("rope_type", s.get("type")) == "llama3":
        # Llama 3.1's frequency-dependent scaling (as in HF's _compute_llama3_parameters).
        factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old_len = s.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    elif s and s.get("rope_type", s.get("type")) == "linear":
        inv_freq = inv_freq / s["factor"]
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64, device=device), inv_freq)
    return freqs.cos().float(), freqs.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, head_dim/2]. HF's rotate-half layout."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hd = args.num_heads, args.num_kv_heads, args.head_dim
        # q, k and v in one matmul: one weight read per step instead of three.
        self.qkv_proj = nn.Linear(args.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=args.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, args.hidden_size, bias=False)
        self.scale = self.hd ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = apply_rope(q.view(T, self.nh, self.hd), cos, sin)
        k = apply_rope(k.view(T, self.nkv, self.hd), cos, sin)
        v = v.view(T, self.nkv, self.hd)
        out = attention.paged_attention(q, k, v, kv_cache[self.layer], meta, self.scale)
        return self.o_proj(out.reshape(T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache, meta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None

    def init_rope(self, max_pos: int, device: torch.device) -> None:
        self.rope_cos, self.rope_sin = rope_cos_sin(self.args, max_pos, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, logits_indices: torch.Tensor) -> torch.Tensor:
        """Returns logits (float32) only for the rows in `logits_indices`: the lm_head is the largest matmul."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        for layer in self.layers:
            x = layer(x, cos, sin, kv_cache, meta)
        x = self.norm(x[logits_indices])
        return self.lm_head(x).float()


def _hf_to_ours(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Renames HF keys and packs q/k/v and gate/up into single matrices."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        out[key.removeprefix("model.")] = t
    for i in range(args.num_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{p}self_attn.{n}_proj.{kind}", None) for n in "qkv"]
            if all(x is not None for x in parts):
                out[f"{p}self_attn.qkv_proj.{kind}"] = torch.cat(parts, 0)
        out[f"{p}mlp.gate_up_proj.weight"] = torch.cat([out.pop(f"{p}mlp.gate_proj.weight"),
                                                        out.pop(f"{p}mlp.up_proj.weight")], 0)
    if args.tie_word_embeddings or "lm_head.weight" not in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def load_model(checkpoint_dir: Path, dtype: torch.dtype, device: torch.device) -> LlamaModel:
    from safetensors.torch import load_file

    cfg = json.loads((checkpoint_dir / "config.json").read_text())
    args = ModelArgs.from_hf_config(cfg)
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device="cpu"))
    with torch.device("meta"):
        model = LlamaModel(args)
    ours = _hf_to_ours(state, args)
    missing = set(model.state_dict()) - set(ours)
    if missing:
        raise ValueError(f"{checkpoint_dir}: checkpoint lacks {sorted(missing)[:4]}...")
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items() if k in model.state_dict()},
                          assign=True, strict=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model = model.to(device).eval()
    return model
