"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

One file, read top to bottom: rotary embedding, attention, MLP, the stack, and the weight loader (config.json as the
model reads it: llmserve/model/args.py). All tokens of a step (prefills and decodes of many sequences) run as one
flat [T] batch; attention is the only layer that needs to know which token belongs to which sequence, through
`AttentionMetadata`. Whether the layers take the Triton path is chosen when the model is loaded (`kernel_mode`) and
kept on the model (`LlamaModel.launch`, shared by its layers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmserve import kernels
from llmserve.model import attention
from llmserve.model import linear as qlinear
from llmserve.model.args import ModelArgs, check_served_context  # noqa: F401 - check_served_context: re-exported
from llmserve.model.attention import AttentionMetadata
from llmserve.model.linear import KernelLayer, Launch, Linear, convert_modules_, quantize_model_, share_launch
from llmserve.model.loading import check_names, load_checkpoint_, meta_state, read_index, stage_rename
from llmserve.model.weights import check_quantization


def rope_cos_sin(args: ModelArgs, max_pos: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    s = args.rope_scaling  # from _rope: rope_type set and the keys of ROPE_KEYS present
    if s and s["rope_type"] == "llama3":
        # Llama 3.1's frequency-dependent scaling (as in HF's _compute_llama3_parameters).
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    elif s and s["rope_type"] == "linear":
        inv_freq = inv_freq / s["factor"]
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64, device=device), inv_freq)
    return freqs.cos().float(), freqs.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, head_dim/2]. HF's rotate-half layout."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class RMSNorm(KernelLayer):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, consumer: nn.Module | None = None
                ) -> tuple[torch.Tensor | qlinear.Fp8Rows, torch.Tensor]:
        """Returns (norm(x + residual), x + residual); without a residual, (norm(x), x). The fused kernel
        updates `residual` in place. When `consumer` (the linear that reads the norm) takes e4m3 rows at this
        step's size, the norm comes quantized for it (`Fp8Rows`, the same values as quantizing it after). x a
        `ResidualSum` (the linear before already added into the residual): the norm is left for `consumer` to fold
        in (`NormedRow`) where it can, else computed over the new residual row."""
        if isinstance(x, qlinear.ResidualSum):
            h = x.residual
            if _folds(consumer, h.shape[0]):
                return qlinear.NormedRow(h, self.weight, x.sumsq, self.eps, x.weighted), h
            return self.forward(h, None, consumer)
        if self.launch.kernels:
            from llmserve.kernels import fused

            kept = x if residual is None else residual
            if isinstance(consumer, qlinear.Fp8Linear) and consumer.takes_fp8_rows(x.shape[0]):
                q, scale = fused.rmsnorm_quant_fp8(x, self.weight, self.eps, residual, pdl=self.launch.pdl)
                return qlinear.Fp8Rows(q, scale, x.dtype), kept
            return fused.rmsnorm(x, self.weight, self.eps, residual, pdl=self.launch.pdl), kept
        if residual is not None:
            x = x + residual
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight, x


def _folds(linear: nn.Module | None, rows: int) -> bool:
    """Whether `linear` can fold the RMSNorm before it and the residual add after it into its one-row kernel
    (llmserve/kernels/gemv.py, int4_pairs.py; not a row-parallel one, whose sum comes after its all-reduce)."""
    fold = getattr(linear, "folds_norm_at", None)
    return fold is not None and fold(rows)


def _adds(linear: nn.Module, rows: int, residual: torch.Tensor, norm: RMSNorm | None) -> dict:
    """The keywords with which `linear` adds its output into the residual (`add_to`) where it folds (`_folds`),
    with the weight of the RMSNorm after it for an int4 one (`next_norm`: it writes the row times it)."""
    if norm is None or not _folds(linear, rows):
        return {}
    int4 = isinstance(linear, qlinear.Int4Linear)
    return {"add_to": residual, "next_norm": norm.weight} if int4 else {"add_to": residual}


@dataclass
class Rope:
    positions: torch.Tensor  # [T]
    table_cos: torch.Tensor  # [max_pos, head_dim/2] float32
    table_sin: torch.Tensor
    cos: torch.Tensor | None = None  # [T, head_dim/2]: gathered, for the torch path and a one-row step's GEMV
    sin: torch.Tensor | None = None


class Attention(KernelLayer):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hd = args.num_heads, args.num_kv_heads, args.head_dim
        # q, k and v in one matmul: one weight read per step instead of three.
        self.qkv_proj = Linear(args.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=args.qkv_bias)
        self.o_proj = Linear(self.nh * self.hd, args.hidden_size, bias=False)
        self.scale = self.hd ** -0.5

    def forward(self, x: torch.Tensor | qlinear.NormedRow, rope: Rope, kv_cache: torch.Tensor, meta: AttentionMetadata,
                adds: dict | None = None) -> torch.Tensor | qlinear.ResidualSum:
        """adds: o_proj's keywords to add its output into the residual row (`_adds`)."""
        T = x.shape[0]
        if self.launch.kernels:
            layer_cache = kv_cache[self.layer]
            qkv = self._qkv_rope_cache(x, rope, layer_cache, meta)
            # The attention kernels launch plainly, PDL or not (slower with it: docs/performance.md).
            h = qkv.view(T, self.nh + 2 * self.nkv, self.hd)
            out = attention.paged_attention_cached(h[:, :self.nh], layer_cache, meta, self.scale, h[:, self.nh:])
            out = out.view(T, self.nh * self.hd)
            return self.o_proj(out, **(adds or {}))
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = apply_rope(q.view(T, self.nh, self.hd), rope.cos, rope.sin)
        k = apply_rope(k.view(T, self.nkv, self.hd), rope.cos, rope.sin)
        v = v.view(T, self.nkv, self.hd)
        out = attention.paged_attention(q, k, v, kv_cache[self.layer], meta, self.scale)
        return self.o_proj(out.reshape(T, self.nh * self.hd))


    def _qkv_rope_cache(self, x: torch.Tensor | qlinear.NormedRow, rope: Rope, layer_cache: torch.Tensor,
                        meta: AttentionMetadata) -> torch.Tensor:
        """qkv with q (and k) rotated and k, v in the cache: in the one-row GEMV's epilogue where it can, else
        a rope_and_cache launch after the product."""
        ropes_at = getattr(self.qkv_proj, "ropes_at", None)
        if rope.cos is not None and ropes_at is not None and ropes_at(x.shape[0]):
            from llmserve.kernels.linear import RopeCache

            cache = RopeCache(rope.cos, rope.sin, meta.slot_mapping, layer_cache, self.nh, self.nkv, self.hd)
            return self.qkv_proj(x, rope=cache)
        from llmserve.kernels.fused import rope_and_cache

        qkv = self.qkv_proj(x)
        rope_and_cache(qkv, rope.positions, rope.table_cos, rope.table_sin, meta.slot_mapping, layer_cache, self.nh,
                       self.nkv, self.hd, pdl=self.launch.pdl, k_in_place=meta.own_kv)
        return qkv


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor | qlinear.NormedRow, adds: dict | None = None
                ) -> torch.Tensor | qlinear.ResidualSum:
        """adds: down_proj's keywords to add its output into the residual row (`_adds`)."""
        gate_up = self.gate_up_proj
        kw = adds or {}
        if getattr(gate_up, "gate_out_at", None) and gate_up.gate_out_at(x.shape[0]):
            return self.down_proj(gate_up(x, gate_out=True), **kw)
        return self.down_proj(gate_up(x), gated=True, **kw)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x, residual, rope, kv_cache, meta, fold_out: RMSNorm | None = None):
        """The residual stream travels beside the hidden state so each add fuses into the next norm; at one row
        into the linear before the norm instead, and the norm into the linear after it (`_folds`). fold_out: the
        next layer's input norm, for down_proj to fold into too (None for the last layer: the final norm and a
        pipeline stage's output take tensors)."""
        h, residual = self.input_layernorm(x, residual, self.self_attn.qkv_proj)
        rows = residual.shape[0]
        h = self.self_attn(h, rope, kv_cache, meta, _adds(self.self_attn.o_proj, rows, residual,
                                                          self.post_attention_layernorm))
        h, residual = self.post_attention_layernorm(h, residual, self.mlp.gate_up_proj)
        return self.mlp(h, _adds(self.mlp.down_proj, rows, residual, fold_out)), residual


class LlamaModel(KernelLayer):
    def __init__(self, args: ModelArgs, use_kernels: bool = False):
        """use_kernels: the Triton path (see llmserve.kernels.usable; load_model and random_model decide it)."""
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rope_cos, self.rope_sin = None, None  # float32 [max_pos, rotary dims / 2] once init_rope runs
        share_launch(self, Launch(kernels=use_kernels))  # quantizing and sharding hand it on to the layers they swap in

    @property
    def kernels(self) -> bool:
        """Whether the model's layers take the Triton path."""
        return self.launch.kernels

    @contextmanager
    def pdl_launches(self, on: bool = True) -> Iterator[None]:
        """Programmatic dependent launch of the linear and fused kernels inside the block (the runner: around
        the capture of a decode graph of up to 16 rows); elsewhere, and for the attention kernels, plain."""
        before = self.launch.pdl
        self.launch.pdl = on and self.launch.kernels
        try:
            yield
        finally:
            self.launch.pdl = before

    def init_rope(self, max_pos: int, device: torch.device) -> None:
        self.rope_cos, self.rope_sin = rope_cos_sin(self.args, max_pos, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, logits_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logits (float32) only for the rows in `logits_indices` (all rows when None): the lm_head is
        the largest matmul."""
        return self.logits(*self.decode_layers(input_ids, positions, kv_cache, meta), logits_indices)

    def decode_layers(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                      meta: AttentionMetadata, carried: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder stack: returns (hidden state, residual stream) of every row, before the final norm.
        carried: a later pipeline stage's input, the previous stage's (hidden state, residual) instead of the
        embedding (llmserve/model/pipeline_parallel.py)."""
        x, residual = (self.embed_tokens(input_ids), None) if carried is None else carried
        rope = Rope(positions, self.rope_cos, self.rope_sin)
        if not self.launch.kernels or positions.shape[0] == 1:  # one row: qkv's GEMV takes them (ROPE_IN_GEMV)
            rope.cos, rope.sin = self.rope_cos[positions], self.rope_sin[positions]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, rope, kv_cache, meta,
                                fold_out=self.layers[i + 1].input_layernorm if i < last else None)
        return x, residual

    def logits(self, x: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor | None = None,
               upcast: bool = True) -> torch.Tensor:
        if rows is not None:
            x, residual = x.index_select(0, rows), residual.index_select(0, rows)
        out = self.lm_head(self.norm(x, residual)[0])
        return out.float() if upcast else out  # not upcast: the lm_head's dtype, all an argmax needs


def random_model(args: ModelArgs, dtype: torch.dtype, device: torch.device, seed: int = 0,
                 std: float = 0.02, kernel_mode: str = "on") -> LlamaModel:
    """A model with random N(0, std) weights built directly on `device` (benchmarks: no 13 GB checkpoint).
    kernel_mode: as in load_model."""
    use = kernels.usable(kernel_mode, device, dtype)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaModel(args, use_kernels=use)
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


def load_model(checkpoint_dir: Path, dtype: torch.dtype, device: torch.device, kernel_mode: str = "on",
               prepare: Callable[[LlamaModel], LlamaModel] | None = None,
               select: Callable[[LlamaModel], LlamaModel] | None = None) -> LlamaModel:
    """Loads an HF Llama checkpoint. kernel_mode ("on", "off", "interpret": llmserve.kernels.mode_from_env): "on"
    takes the Triton path where it runs (16 bits, CUDA, triton importable). config.json may carry "quantization"
    (llmserve/model/quantize.py, build_engines' imports: the linears become quantized modules) and
    "llmserve_random_init": {"seed", "std"} (benchmarks: random weights made on `device`, no files).
    The weights stream shard by shard to `device` (llmserve/model/loading.py). select: applied to the empty model
    (a pipeline stage keeps its layers, a tensor-parallel rank its sizes and `slice_of`: each reads only its part
    of the tensors). prepare: applied to the loaded model (tensor parallelism adds its all-reduces)."""
    cfg = json.loads((checkpoint_dir / "config.json").read_text())
    args = ModelArgs.from_hf_config(cfg)
    qcfg = cfg.get("quantization")
    if cfg.get("llmserve_random_init") is not None:
        r = cfg["llmserve_random_init"]
        model = random_model(args, dtype, device, seed=int(r.get("seed", 0)), std=float(r.get("std", 0.02)),
                             kernel_mode=kernel_mode)
        if qcfg:
            quantize_model_(model, qcfg["mode"], bool(qcfg.get("keep_attention_fp16", False)),
                            qcfg.get("group_size"), qcfg.get("modules"), qcfg.get("lm_head"))
        model = select(model) if select is not None else model
        return prepare(model) if prepare is not None else model
    index = read_index(checkpoint_dir)
    if qcfg:
        check_quantization(qcfg, meta_state(index), f"{checkpoint_dir / 'config.json'}: quantization")
    with torch.device("meta"):
        model = LlamaModel(args, use_kernels=kernels.usable(kernel_mode, device, dtype))
        if qcfg:
            convert_modules_(model, qcfg["mode"], bool(qcfg.get("keep_attention_fp16", False)), qcfg.get("modules"))
            if qcfg.get("lm_head"):
                qlinear.convert_lm_head_(model, qcfg["lm_head"])
    if select is not None:
        model = select(model)
    # A stage's tied head has no embedding to share: it loads the embedding's tensor as its own. A quantized head
    # is untied: it has tensors of its own.
    ties = args.tie_word_embeddings and not (qcfg and qcfg.get("lm_head"))
    tied = ties and model.embed_tokens is not None and model.lm_head is not None
    rename = stage_rename(model, ties)
    check_names(model, index, tied, checkpoint_dir, rename)
    # Shard by shard to the device, a tensor-parallel rank's slices only (tensor_parallel.shard_empty).
    load_checkpoint_(model, index, dtype, device, tied, rename, getattr(model, "slice_of", None))
    if prepare is not None:
        model = prepare(model)
    model = model.to(device).eval()
    return model
