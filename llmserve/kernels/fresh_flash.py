"""Fresh prompts' attention through torch's FlashAttention varlen (`torch.nn.attention.varlen`), in place of the
varlen kernel's own-K/V launch where `varlen.FRESH_FLASH` asks for it: causal over each sequence's own new
tokens, as many K/V heads as the model has (GQA), read from the qkv buffer's views without copies.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch


@functools.cache
def _api() -> tuple[Callable | None, Callable, frozenset[str]] | None:
    """(varlen_attn_out or None, varlen_attn, their keyword names), or None where this torch has neither."""
    try:
        from torch.nn.attention import varlen
    except ImportError:
        return None
    names = frozenset(inspect.signature(varlen.varlen_attn).parameters)
    return getattr(varlen, "varlen_attn_out", None), varlen.varlen_attn, names


def usable(q: torch.Tensor, new_kv: torch.Tensor, scale: float) -> bool:
    """Whether this torch's varlen attention computes the attention the varlen kernel would for q (up to summation
    order): a CUDA tensor of 16 bits, as many K/V heads as query heads or a GQA switch, the scale taken (or the
    default one). Anything else keeps the kernel's own launch."""
    api = _api()
    if api is None or q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    names = api[2]
    kv_heads = new_kv.shape[1] // 2
    gqa_ok = kv_heads == q.shape[1] or "enable_gqa" in names
    return gqa_ok and ("scale" in names or scale == q.shape[-1] ** -0.5)


def attend(q: torch.Tensor, new_kv: torch.Tensor, query_start: torch.Tensor, max_query: int, scale: float,
           out: torch.Tensor) -> None:
    """out[t] = causal attention of q[t] over its own sequence's new K/V (new_kv: [T, 2 KVH, D], K heads then V
    heads; query_start: [B+1] int32 offsets) for every sequence, each as if it were a fresh prompt: the caller
    overwrites the rows of sequences with a cached prefix."""
    attn_out, attn, names = _api()
    kv_heads = new_kv.shape[1] // 2
    k, v = new_kv[:, :kv_heads], new_kv[:, kv_heads:]
    kw = {"window_size": (-1, 0)} if "window_size" in names else {"is_causal": True}
    if "scale" in names:
        kw["scale"] = scale
    if "enable_gqa" in names:
        kw["enable_gqa"] = kv_heads != q.shape[1]
    args = (q, k, v, query_start, query_start, max_query, max_query)
    if attn_out is not None:
        attn_out(out, *args, **kw)
    else:
        out.copy_(attn(*args, **kw))
