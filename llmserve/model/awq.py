"""Activation-aware scales for the int4 modes (AWQ, Lin et al. 2023), applied to an HF state dict before
round-to-nearest quantization.

For each group of linears that read the same input x, AWQ searches one scale s per input channel: the
weights become W * s (the salient channels, those with large mean |x|, get finer 4-bit steps) and s is folded
into whatever makes x (divided out), so the 16-bit model computes the same function. As llm-awq's
awq/quantize/auto_scale.py (`auto_scale_block`, `scale_ln_fcs`, `scale_fc_fc`):
- s = mean|x| ** r / sqrt(max * min) over r = 0, 1/20, ..., 19/20; the r with the least squared error after
  quantization wins (r = 0 is plain RTN, so the search never does worse than RTN on its own loss);
- q/k/v read input_layernorm (folded into its weight), gate/up read post_attention_layernorm, down reads
  silu(gate) * up (folded into up_proj's rows); o_proj is scaled only when v_proj has its shape (no GQA), as
  llm-awq does, and folded into v_proj's rows.
Then, as llm-awq's auto_clip.py (`auto_clip_layer`), each scaled linear but q and k gets a clipping search: per
output row and group, the largest |w| allowed is cut to 1, 0.95, ..., 0.55 of its own, the one with the least
squared error of that group's share of the output kept (a finer step for most weights against a few clipped).
One simplification, for a CPU run in seconds: the scale search measures the error on the group's own outputs
(llm-awq runs the whole attention / MLP block for q/k/v and gate/up).
All searches use the activations of the unquantized model on CALIBRATION (one prefill, float32), as llm-awq
takes every layer's inputs before scaling it; all scales of a layer come from its unscaled weights, then apply.
Deterministic: fixed text, float32, no sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmserve.model.attention import AttentionMetadata
from llmserve.model.int4 import quantize_int4
from llmserve.model.launch import silu_gate
from llmserve.model.llama import LlamaModel, load_model

# A few KB of public-domain English (the Gettysburg Address, the opening of Pride and Prejudice), distinct from
# bench/data's evaluation text.
CALIBRATION = Path(__file__).resolve().parent / "data" / "awq_calibration.txt"
N_GRID = 20
# One prefill of at most this many calibration tokens (llm-awq: samples of 512): the search is linear in it and
# the prefill quadratic; a byte-level tokenizer (the tests') would otherwise give one token per character.
MAX_TOKENS = 1024


def fake_quant(w: torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """w -> its int4 round-to-nearest value (float32): quantize_int4 then dequantize_int4's arithmetic, without
    packing the codes (4x faster; tests check it equals the round trip)."""
    n, k = w.shape
    q = quantize_int4(w, group_size, symmetric)
    wg = w.float().reshape(n, k // group_size, group_size)
    s = q["weight_scale"].float()[..., None]
    if symmetric:
        out = s * torch.round(wg / s).clamp(-8, 7)
    else:
        m = q["weight_min"].float()[..., None]
        out = s * torch.round((wg - m) / s).clamp(0, 15) + m
    return out.reshape(n, k)


def search_scale(x: torch.Tensor, w: torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """x [T, K] inputs, w [N, K] the group's weights stacked: the best per-input-channel scale [K]."""
    x, w = x.float(), w.float()
    ref = x @ w.t()
    x_mean = x.abs().mean(0)
    best, best_loss = torch.ones_like(x_mean), float("inf")
    for i in range(N_GRID):
        s = x_mean.pow(i / N_GRID).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = (ref - (x / s) @ fake_quant(w * s, group_size, symmetric).t()).pow(2).mean().item()
        if loss < best_loss:
            best, best_loss = s, loss
    return best


CLIP_STEPS, CLIP_TOKENS = 10, 512  # llm-awq: max_shrink 0.5 over a grid of 20; 512 tokens sampled


def search_clip(x: torch.Tensor, w: torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """x [T, K] inputs, w [N, K]: the clipping bound per output row and group [N, K / g, 1] (1.0 x its amax: none)."""
    x = x.float()[:: max(1, x.shape[0] // CLIP_TOKENS)]
    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)
    xg = x.reshape(x.shape[0], k // group_size, group_size).transpose(0, 1)  # [G, T, g]
    amax = wg.abs().amax(-1, keepdim=True)
    best, best_err = amax.clone(), torch.full(amax.shape[:2], float("inf"))
    for i in range(CLIP_STEPS):
        bound = amax * (1 - i / (2 * CLIP_STEPS))
        clipped = torch.maximum(torch.minimum(wg, bound), -bound)
        diff = fake_quant(clipped.reshape(n, k), group_size, symmetric).reshape(wg.shape) - wg
        err = torch.bmm(xg, diff.transpose(0, 1).transpose(1, 2)).pow(2).mean(1).t()  # [N, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], bound, best)
    return best


def clip_(state: dict[str, torch.Tensor], name: str, x: torch.Tensor, group_size: int, symmetric: bool) -> None:
    w = state[name + ".weight"].float()
    bound = search_clip(x, w, group_size, symmetric)
    wg = w.reshape(*bound.shape[:2], group_size)
    state[name + ".weight"] = torch.maximum(torch.minimum(wg, bound), -bound).reshape(w.shape)


def calibration_inputs(model: LlamaModel, ids: list[int]) -> list[dict[str, torch.Tensor]]:
    """One prefill of `ids`; per layer the inputs of qkv_proj ("attn"), o_proj ("o"), gate_up_proj ("mlp")
    and down_proj ("down", after silu(gate) * up)."""
    feats: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]
    hooks = []
    for i, layer in enumerate(model.layers):
        for key, mod in (("attn", layer.self_attn.qkv_proj), ("o", layer.self_attn.o_proj),
                         ("mlp", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj)):
            hooks.append(mod.register_forward_pre_hook(_recorder(feats[i], key), with_kwargs=True))
    try:
        _prefill(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return feats


def _recorder(store: dict[str, torch.Tensor], key: str):
    def hook(module, args, kwargs):
        x = args[0]
        if kwargs.get("gated", args[1] if len(args) > 1 else False):
            x = silu_gate(x)
        store[key] = x.detach().float().reshape(-1, x.shape[-1])
    return hook


@torch.inference_mode()
def _prefill(model: LlamaModel, ids: list[int], block_size: int = 16) -> None:
    a, T = model.args, len(ids)
    model.init_rope(max(T, 16), torch.device("cpu"))
    meta = AttentionMetadata.for_prefill([T], block_size, torch.device("cpu"), a.num_heads // a.num_kv_heads,
                                         a.head_dim)
    cache = torch.zeros(a.num_layers, 2, -(-T // block_size), block_size, a.num_kv_heads, a.head_dim)
    model(torch.tensor(ids), torch.arange(T), cache, meta, None)


def apply_awq_(state: dict[str, torch.Tensor], src: Path, group_size: int, symmetric: bool,
               keep_attention_fp16: bool = False, clip: bool = True) -> int:
    """Scales the HF float `state` of checkpoint `src` in place (the 16-bit function is unchanged up to
    rounding). The weights it scales come back float32 (they are quantized next: rounding them to 16 bits
    first would add an error of its own); the norms keep their dtype. `clip`: then the clipping search (which,
    unlike the scales, changes the 16-bit function). Returns how many linear groups were scaled."""
    model = load_model(src, torch.float32, torch.device("cpu"), kernel_mode="off")
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(CALIBRATION.read_text()).ids[:MAX_TOKENS]
    feats = calibration_inputs(model, ids)
    mha = model.args.num_heads == model.args.num_kv_heads
    done = 0
    for i, f in enumerate(feats):
        groups = plans(f, i, keep_attention_fp16, mha)
        scales = [search_scale(x, torch.cat([state[n + ".weight"] for n in names]), group_size, symmetric)
                  for x, _, names in groups]
        for (x, prev, names), s in zip(groups, scales):
            _fold(state, prev, names, s)
            done += 1
            for name in names if clip else ():
                if not name.endswith(("q_proj", "k_proj")):  # llm-awq leaves q and k unclipped
                    clip_(state, name, x / s, group_size, symmetric)
    return done


def plans(feats: dict[str, torch.Tensor], layer: int, keep_attention_fp16: bool, mha: bool
          ) -> list[tuple[torch.Tensor, str, list[str]]]:
    """Layer `layer`'s groups: (their input, the tensor that makes it, the linears that read it)."""
    p = f"model.layers.{layer}."
    out = [(feats["mlp"], p + "post_attention_layernorm.weight", [p + "mlp.gate_proj", p + "mlp.up_proj"]),
           (feats["down"], p + "mlp.up_proj", [p + "mlp.down_proj"])]
    if not keep_attention_fp16:
        out.append((feats["attn"], p + "input_layernorm.weight", [p + f"self_attn.{n}_proj" for n in "qkv"]))
        if mha:
            out.append((feats["o"], p + "self_attn.v_proj", [p + "self_attn.o_proj"]))
    return out


def _fold(state: dict[str, torch.Tensor], prev: str, names: list[str], s: torch.Tensor) -> None:
    """W[:, c] *= s[c] for the consumers; the producer divides: a norm's weight, or a linear's output rows
    (and bias). Weights stay float32 (all of them are quantized afterwards); norms and biases, which stay
    unquantized, return to their dtype."""
    for n in names:
        state[n + ".weight"] = state[n + ".weight"].float() * s
    keys = [prev] if prev.endswith(".weight") else [prev + ".weight", prev + ".bias"]
    for key in (k for k in keys if k in state):
        t = state[key]
        out = t.float() / (s if t.dim() == 1 else s[:, None])
        state[key] = out.to(t.dtype) if t.dim() == 1 else out
