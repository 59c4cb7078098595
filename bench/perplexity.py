"""Quality of the quantized checkpoints: perplexity on a fixed public-domain text (the opening of the US
Declaration of Independence, bench/data/), unquantized vs fp8 vs int8_wo vs int4 (RTN and AWQ, groups of 64) vs
the GGUF file's own 4-bit weights kept native, and some of them with the lm_head in int8 too.

    python -m bench.perplexity --checkpoint model_repository/llm/checkpoint --device cpu --dtype bfloat16 \\
        --out bench/results/2026-12-03-cpu-perplexity

Every variant goes through the same path as serving: `quantize_checkpoint` writes a checkpoint (the GGUF variant:
`build_engines` imports the embedded Q4_1 file natively), `load_model` reads it back, and the model scores the
whole text as one prefill. On CPU the quantized layers run their fallback (fp8: e4m3 weights and, unless the
variant says 16-bit activations, per-token e4m3 activations, dequantized; int8/int4: dequantized weights), which
computes what the GPU kernels compute up to summation order (and, for fp8 past 32 rows, the tensor cores' fast
accumulation unless `fp8_fast_accum` is off: a GEMM output's relative error 2.1-3.3e-3 instead of 1.7e-3).
`--variants` picks rows by name.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmserve import kernels
from llmserve.model.attention import AttentionMetadata
from llmserve.model.linear import Fp8Linear
from llmserve.model.llama import load_model
from llmserve.model.quantize import quantize_checkpoint

TEXT = Path(__file__).resolve().parent / "data" / "declaration_of_independence.txt"


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str  # "none", a quantize_checkpoint mode, or "gguf_native"
    keep_attention_fp16: bool = False
    fp8_activations: bool = True  # fp8 only: e4m3 activations (the _scaled_mm path) or 16-bit (batch-1 GEMV)
    group_size: int = 64
    awq: bool = False
    lm_head: str | None = None  # the lm_head's mode (quantize_checkpoint's lm_head), None: 16-bit


# int4 groups of 64: SmolLM2-135M's hidden size, 576, is no multiple of 128 (quantize_checkpoint refuses g128 for
# its q/k/v/gate/up), and one checkpoint holds one group size; 64 is the largest that divides every layer.
VARIANTS = [
    Variant("unquantized", "none"),
    Variant("fp8 (e4m3 activations: _scaled_mm path)", "fp8"),
    Variant("fp8 (16-bit activations: batch-1 GEMV path)", "fp8", fp8_activations=False),
    Variant("int8_wo", "int8_wo"),
    Variant("fp8 keep_attention_fp16 (e4m3 activations)", "fp8", True),
    Variant("int8_wo keep_attention_fp16", "int8_wo", True),
    Variant("int4_sym g64 RTN", "int4_sym"),
    Variant("int4_sym g64 AWQ", "int4_sym", awq=True),
    Variant("int4_asym g64 RTN", "int4_asym"),
    Variant("int4_asym g64 AWQ", "int4_asym", awq=True),
    Variant("int4_asym g32 RTN (the GGUF file's own grid)", "int4_asym", group_size=32),
    Variant("GGUF-native (Q4_1 kept 4-bit: int4_asym g32)", "gguf_native"),
    Variant("int8_wo + int8_wo lm_head", "int8_wo", lm_head="int8_wo"),
    Variant("fp8 (16-bit activations: batch-1 GEMV path) + int8_wo lm_head", "fp8", fp8_activations=False,
            lm_head="int8_wo"),
    Variant("int4_asym g64 AWQ + int8_wo lm_head", "int4_asym", awq=True, lm_head="int8_wo"),
]


def build(v: Variant, src: Path, tmp: Path) -> Path:
    """The checkpoint directory variant `v` loads (written under `tmp`; the unquantized one is `src`)."""
    if v.mode == "none":
        return src
    out = tmp / f"{v.mode}-{v.keep_attention_fp16}-{v.group_size}-{v.awq}-{v.lm_head}"
    if (out / "config.json").is_file():
        return out  # fp8 with and without e4m3 activations share one checkpoint
    if v.mode == "gguf_native":
        from build_engines.importer import embedded_gguf, import_checkpoint

        return import_checkpoint(embedded_gguf(), out, dequantize=False)
    return quantize_checkpoint(src, out, v.mode, v.keep_attention_fp16, group_size=v.group_size, awq=v.awq,
                               lm_head=v.lm_head)


@torch.inference_mode()
def score(model, ids: list[int], device: torch.device, dtype: torch.dtype, block_size: int = 16
          ) -> tuple[float, torch.Tensor]:
    """(perplexity, log-probabilities [T - 1, vocab] float32 on the CPU) of `ids` as one prefill."""
    a = model.args
    T = len(ids)
    model.init_rope(max(T, 16), device)
    meta = AttentionMetadata.for_prefill([T], block_size, device, a.num_heads // a.num_kv_heads, a.head_dim)
    cache = torch.zeros(a.num_layers, 2, -(-T // block_size), block_size, a.num_kv_heads, a.head_dim, dtype=dtype,
                        device=device)
    x = torch.tensor(ids, device=device)
    logits = model(x, torch.arange(T, device=device), cache, meta, None)[:-1].float()
    return math.exp(F.cross_entropy(logits, x[1:]).item()), logits.log_softmax(-1).cpu()


def mean_kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean over tokens of KL(ref || got) in nats: the quantization error itself. A perplexity delta on 800 tokens
    also carries luck (an error of the same size can help or hurt this text), so both are reported."""
    return F.kl_div(got, ref, log_target=True, reduction="batchmean").item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perplexity", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="model_repository/llm/checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--variants", nargs="*", default=None, help="names (substrings) of the rows to run; "
                    "the unquantized row always runs first")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from llmserve.serving.tokenizer import Tokenizer

    src = Path(a.checkpoint)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    kernel_mode = kernels.mode_from_env()  # LLMSERVE_TRITON_KERNELS=0: the torch path on a GPU too
    ids = Tokenizer(src).encode(TEXT.read_text())
    chosen = [v for v in VARIANTS if v.mode == "none" or a.variants is None or any(s in v.name for s in a.variants)]
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for v in chosen:
            t0 = time.time()
            model = load_model(build(v, src, Path(tmp)), dtype, device, kernel_mode)
            for m in model.modules():
                if isinstance(m, Fp8Linear):
                    m.quantize_activations = v.fp8_activations
            ppl, logp = score(model, ids, device, dtype)
            ref = logp if ref is None else ref
            rows.append({"variant": v.name if v.mode != "none" else a.dtype, **vars(v), "perplexity": ppl,
                         "mean_kl": mean_kl(ref, logp), "seconds": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
            del model
    base = rows[0]["perplexity"]
    for r in rows:
        r["relative_delta"] = r["perplexity"] / base - 1
    write(a, src, ids, rows)
    return 0


def write(a: argparse.Namespace, src: Path, ids: list[int], rows: list[dict]) -> None:
    import transformers

    machine = f"{platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads"
    result = {"checkpoint": str(src), "text": TEXT.name, "tokens": len(ids), "device": a.device, "dtype": a.dtype,
              "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
              "machine": machine, "date": time.strftime("%Y-%m-%d"),
              "command": "python -m bench.perplexity " + " ".join(sys.argv[1:]), "rows": rows}
    lines = [f"Perplexity on `{TEXT.name}` ({len(ids)} tokens), checkpoint `{src}`, {a.device} ({machine}), "
             f"{a.dtype}, torch {torch.__version__}, {result['date']}", "",
             "| variant | perplexity | relative to unquantized | mean KL to unquantized (nats/token) |",
             "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['perplexity']:.4f} | {r['relative_delta']:+.2%} | {r['mean_kl']:.4f} |"
              for r in rows]
    print("\n".join(lines))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"results-{a.dtype}"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / f"{stem}.md").write_text(f"`{result['command']}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
