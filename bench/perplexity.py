"""Quality of the quantized checkpoints: perplexity on a fixed public-domain text (the opening of the US
Declaration of Independence, bench/data/), unquantized vs fp8 vs int8_wo, each also with keep_attention_fp16.

    python -m bench.perplexity --checkpoint model_repository/llm/checkpoint --device cpu --dtype bfloat16 \\
        --out bench/results/2026-11-25-cpu-perplexity

Every variant goes through the same path as serving: `quantize_checkpoint` writes a checkpoint, `load_model`
reads it back, and the model scores the whole text as one prefill. On CPU the quantized layers run their
fallback (fp8: e4m3 weights and per-token e4m3 activations, dequantized; int8: dequantized weights), which
computes what the GPU kernels compute up to summation order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmserve import kernels
from llmserve.model.attention import AttentionMetadata
from llmserve.model.linear import Fp8Linear
from llmserve.model.llama import load_model
from llmserve.model.quantize import quantize_checkpoint

TEXT = Path(__file__).resolve().parent / "data" / "declaration_of_independence.txt"
# (mode, keep_attention_fp16, fp8 activations quantized)
VARIANTS = [("none", False, True), ("fp8", False, True), ("fp8", False, False), ("int8_wo", False, True),
            ("fp8", True, True), ("int8_wo", True, True)]


@torch.inference_mode()
def perplexity(model, ids: list[int], device: torch.device, dtype: torch.dtype, block_size: int = 16) -> float:
    a = model.args
    T = len(ids)
    model.init_rope(max(T, 16), device)
    meta = AttentionMetadata.for_prefill([T], block_size, device, a.num_heads // a.num_kv_heads, a.head_dim)
    cache = torch.zeros(a.num_layers, 2, -(-T // block_size), block_size, a.num_kv_heads, a.head_dim, dtype=dtype,
                        device=device)
    x = torch.tensor(ids, device=device)
    logits = model(x, torch.arange(T, device=device), cache, meta, None)
    return math.exp(F.cross_entropy(logits[:-1].float(), x[1:]).item())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perplexity", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="model_repository/llm/checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from llmserve.serving.tokenizer import Tokenizer

    src = Path(a.checkpoint)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    kernel_mode = kernels.mode_from_env()  # LLMSERVE_TRITON_KERNELS=0: the torch path on a GPU too
    ids = Tokenizer(src).encode(TEXT.read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, keep, act in VARIANTS:
            t0 = time.time()
            ckpt = src if mode == "none" else Path(tmp) / f"{mode}-{keep}"
            if mode != "none" and not (ckpt / "config.json").is_file():
                quantize_checkpoint(src, ckpt, mode, keep)
            model = load_model(ckpt, dtype, device, kernel_mode)
            for m in model.modules():
                if isinstance(m, Fp8Linear):
                    m.quantize_activations = act
            ppl = perplexity(model, ids, device, dtype)
            name = a.dtype if mode == "none" else mode + (" keep_attention_fp16" if keep else "")
            if mode == "fp8":
                name += " (e4m3 activations: _scaled_mm path)" if act else " (16-bit activations: batch-1 GEMV path)"
            rows.append({"variant": name, "mode": mode, "keep_attention_fp16": keep, "fp8_activations": act,
                         "perplexity": ppl,
                         "seconds": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
            del model
    base = rows[0]["perplexity"]
    for r in rows:
        r["relative_delta"] = r["perplexity"] / base - 1
    result = {"checkpoint": str(src), "text": TEXT.name, "tokens": len(ids), "device": a.device, "dtype": a.dtype,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    lines = [f"Perplexity on `{TEXT.name}` ({len(ids)} tokens), checkpoint `{src}`, {a.device}, {a.dtype}, "
             f"torch {torch.__version__}, {result['date']}", "",
             "| variant | perplexity | relative to unquantized |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['perplexity']:.4f} | {r['relative_delta']:+.2%} |" for r in rows]
    print("\n".join(lines))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "perplexity.json").write_text(json.dumps(result, indent=1))
        (out / "perplexity.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
