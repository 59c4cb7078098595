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
from torch import nn

from llmserve.model import attention
from llmserve.model.attention import AttentionMetadata
from llmserve.model.linear import Linear, convert_modules_, quantize_model_, use_kernels
from llmserve.model.weights import cast, hf_to_ours, load_safetensors


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
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (norm(x + residual), x + residual); without a residual, (norm(x), x). The fused kernel
        updates `residual` in place."""
        if use_kernels(x):
            from llmserve.kernels.fused import rmsnorm

            return rmsnorm(x, self.weight, self.eps, residual), (x if residual is None else residual)
        if residual is not None:
            x = x + residual
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight, x


@dataclass
class Rope:
    positions: torch.Tensor  # [T]
    table_cos: torch.Tensor  # [max_pos, head_dim/2] float32
    table_sin: torch.Tensor
    cos: torch.Tensor | None = None  # [T, head_dim/2]: gathered, for the torch path
    sin: torch.Tensor | None = None


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hd = args.num_heads, args.num_kv_heads, args.head_dim
        # q, k and v in one matmul: one weight read per step instead of three.
        self.qkv_proj = Linear(args.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=args.qkv_bias)
        self.o_proj = Linear(self.nh * self.hd, args.hidden_size, bias=False)
        self.scale = self.hd ** -0.5

    def forward(self, x: torch.Tensor, rope: Rope, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.qkv_proj(x)
        if use_kernels(qkv):
            from llmserve.kernels.fused import rope_and_cache

            layer_cache = kv_cache[self.layer]
            rope_and_cache(qkv, rope.positions, rope.table_cos, rope.table_sin, meta.slot_mapping, layer_cache,
                           self.nh, self.nkv, self.hd)
            q = qkv.view(T, self.nh + 2 * self.nkv, self.hd)[:, :self.nh]
            out = attention.paged_attention_cached(q, layer_cache, meta, self.scale)
            return self.o_proj(out.view(T, self.nh * self.hd))
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = apply_rope(q.view(T, self.nh, self.hd), rope.cos, rope.sin)
        k = apply_rope(k.view(T, self.nkv, self.hd), rope.cos, rope.sin)
        v = v.view(T, self.nkv, self.hd)
        out = attention.paged_attention(q, k, v, kv_cache[self.layer], meta, self.scale)
        return self.o_proj(out.reshape(T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x), gated=True)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x, residual, rope, kv_cache, meta):
        """The residual stream travels beside the hidden state so each add fuses into the next norm."""
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, rope, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None

    def init_rope(self, max_pos: int, device: torch.device) -> None:
        self.rope_cos, self.rope_sin = rope_cos_sin(self.args, max_pos, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, logits_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logits (float32) only for the rows in `logits_indices` (all rows when None): the lm_head is
        the largest matmul."""
        return self.logits(*self.decode_layers(input_ids, positions, kv_cache, meta), logits_indices)

    def decode_layers(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                      meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder stack: returns (hidden state, residual stream) of every row, before the final norm."""
        x = self.embed_tokens(input_ids)
        rope = Rope(positions, self.rope_cos, self.rope_sin)
        if not use_kernels(x):
            rope.cos, rope.sin = self.rope_cos[positions], self.rope_sin[positions]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, kv_cache, meta)
        return x, residual

    def logits(self, x: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is not None:
            x, residual = x.index_select(0, rows), residual.index_select(0, rows)
        x, _ = self.norm(x, residual)
        return self.lm_head(x).float()


def random_model(args: ModelArgs, dtype: torch.dtype, device: torch.device, seed: int = 0,
                 std: float = 0.02) -> LlamaModel:
    """A model with random N(0, std) weights built directly on `device` (benchmarks: no 13 GB checkpoint)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaModel(args)
    finally:
        torch.set_default_dtype(prev)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=gen)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def load_model(checkpoint_dir: Path, dtype: torch.dtype, device: torch.device) -> LlamaModel:
    """Loads an HF Llama checkpoint. config.json may carry:
    - "quantization": {"mode": "fp8" | "int8_wo", "keep_attention_fp16": bool} (made by llmserve/model/quantize.py):
      the matching linear layers become quantized modules;
    - "llmserve_random_init": {"seed": int, "std": float}: no weight files; random weights made on `device`
      (and quantized there when "quantization" is set too). For benchmarks only."""
    cfg = json.loads((checkpoint_dir / "config.json").read_text())
    args = ModelArgs.from_hf_config(cfg)
    qcfg = cfg.get("quantization")
    if cfg.get("llmserve_random_init") is not None:
        r = cfg["llmserve_random_init"]
        model = random_model(args, dtype, device, seed=int(r.get("seed", 0)), std=float(r.get("std", 0.02)))
        if qcfg:
            quantize_model_(model, qcfg["mode"], bool(qcfg.get("keep_attention_fp16", False)))
        return model
    state = load_safetensors(checkpoint_dir)
    with torch.device("meta"):
        model = LlamaModel(args)
        if qcfg:
            convert_modules_(model, qcfg["mode"], bool(qcfg.get("keep_attention_fp16", False)))
    ours = hf_to_ours(state, args.num_layers, args.tie_word_embeddings)
    expected = model.state_dict()
    missing = set(expected) - set(ours)
    if missing:
        raise ValueError(f"{checkpoint_dir}: checkpoint lacks {sorted(missing)[:4]}...")
    model.load_state_dict({k: cast(k, v, dtype) for k, v in ours.items() if k in expected}, assign=True, strict=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model = model.to(device).eval()
    return model
