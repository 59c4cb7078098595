"""The fp8 reference outside our engine: perplexity of the checkpoint in HF transformers with its decoder linear
weights fake-quantized to e4m3 per output row (scale = row amax / 448), activations 16-bit, on the text and
with the scoring of bench/perplexity.py. Switches, one factor at a time, to find where our engine's fp8 loss
differs from this one (issue 22 item 5):

    python -m bench.hf_fake_quant --checkpoint model_repository/llm/checkpoint --dtype bfloat16
    python -m bench.hf_fake_quant --dtype bfloat16 --from-float32           # quantize before the cast to bf16
    python -m bench.hf_fake_quant --dtype bfloat16 --no-quantize          # the baseline

Loaded with local files only (no hub access).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.perplexity import TEXT
from llmserve.model.linear import FP8, FP8_MAX, MLP

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def fake_fp8(w: torch.Tensor, scale_dtype: torch.dtype, per: str) -> torch.Tensor:
    """w [N, K] -> e4m3 per row ("row") or one scale for the whole tensor ("tensor"), back in w's dtype."""
    wf = w.float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per == "row" else wf.abs().amax().reshape(1, 1)
    scale = (amax.clamp(min=1e-12) / FP8_MAX).to(scale_dtype).float()
    return ((wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale).to(w.dtype)


@torch.inference_mode()
def run(a: argparse.Namespace, text: Path = TEXT) -> dict:
    """One configuration: its perplexity, and its logits (float32) under "logits"."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    src = Path(a.checkpoint)
    dtype = getattr(torch, a.dtype)
    # --from-float32: quantize the checkpoint's float32 weights, then cast (as llmserve/model/quantize.py does);
    # default: load in `dtype` first and quantize those rounded weights (the usual HF fake-quant recipe)
    load_dtype = torch.float32 if a.from_float32 else dtype
    model = LlamaForCausalLM.from_pretrained(src, local_files_only=True, dtype=load_dtype).eval()
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    ids = tok.backend_tokenizer.encode(text.read_text(), add_special_tokens=True).ids  # as bench/perplexity.py
    names = MLP + (() if a.keep_attention_fp16 else ATTENTION)
    n = 0
    if a.quantize:
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in names:
                mod.weight.copy_(fake_fp8(mod.weight, getattr(torch, a.scale_dtype), a.per))
                n += 1
        if a.lm_head:  # tied to embed_tokens in SmolLM2: the embedding changes too
            model.lm_head.weight.copy_(fake_fp8(model.lm_head.weight, getattr(torch, a.scale_dtype), a.per))
    for p in model.parameters():  # not model.to(dtype): that would also round the rotary inv_freq buffer
        p.data = p.data.to(dtype)
    x = torch.tensor([ids])
    logits = model(x).logits[0, :-1].float()
    ppl = math.exp(F.cross_entropy(logits, x[0, 1:]).item())
    return {"logits": logits, "text": text.name, "dtype": a.dtype, "from_float32": a.from_float32,
            "quantized_linears": n, "lm_head": a.lm_head, "scale_dtype": a.scale_dtype,
            "per": a.per, "keep_attention_fp16": a.keep_attention_fp16, "tokens": len(ids), "perplexity": ppl}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hf_fake_quant", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="model_repository/llm/checkpoint")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-quantize", dest="quantize", action="store_false", help="the unquantized baseline")
    ap.add_argument("--scale-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--per", default="row", choices=["row", "tensor"])
    ap.add_argument("--lm-head", action="store_true", help="fake-quantize the (tied) lm_head too")
    ap.add_argument("--keep-attention-fp16", action="store_true")
    ap.add_argument("--from-float32", action="store_true", help="quantize the float32 weights, then cast")
    ap.add_argument("--table", action="store_true", help="the factor table (both texts, KL to float32)")
    a = ap.parse_args(argv)
    if a.table:
        print(table(a.checkpoint))
        return 0
    r = run(a)
    r.pop("logits")
    print(json.dumps(r))
    return 0


# (label, dtype, quantize, from_float32)
CONFIGS = [("float32 unquantized (reference)", "float32", False, False), ("bf16 unquantized", "bfloat16", False, False),
           ("fp8 W, float32 compute", "float32", True, False),
           ("fp8 W from bf16-rounded weights, bf16 compute (the usual HF recipe)", "bfloat16", True, False),
           ("fp8 W from float32 weights, bf16 compute (as llmserve quantizes)", "bfloat16", True, True)]


def table(checkpoint: str) -> str:
    """Perplexity and mean KL(reference || config) per token on the evaluation and the calibration texts: KL
    measures the quantization error itself, without the luck of whether it happens to help the text."""
    from llmserve.model.awq import CALIBRATION

    lines = ["| configuration | text | perplexity | vs same-dtype unquantized | mean KL to float32 (nats) |",
             "|---|---|---|---|---|"]
    for text in (TEXT, CALIBRATION):
        ref = base = None
        for label, dtype, quantize, f32 in CONFIGS:
            a = argparse.Namespace(checkpoint=checkpoint, dtype=dtype, quantize=quantize, scale_dtype="float32",
                                   per="row", lm_head=False, keep_attention_fp16=False, from_float32=f32)
            r = run(a, text)
            ref = r["logits"] if ref is None else ref
            base = {**(base or {}), dtype: r["perplexity"]} if not quantize else base
            kl = F.kl_div(r["logits"].log_softmax(-1), ref.log_softmax(-1), log_target=True,
                          reduction="batchmean").item()
            lines.append(f"| {label} | {text.name} | {r['perplexity']:.4f} | "
                         f"{r['perplexity'] / base[dtype] - 1:+.2%} | {kl:.5f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
