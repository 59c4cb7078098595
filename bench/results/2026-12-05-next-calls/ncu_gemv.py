"""The driver of `ncu-gemv.sh`: Llama-3.1-8B's batch-1 GEMVs (qkv, o, gate_up, down with the gate fused), bf16, fp8
and int4 g128 symmetric (each matrix through the paired-bf16 GEMV too; down_proj through words and bytes), then the
8-row tensor-core kernels, bf16 and int4 (matched launches a matrix: 4 GEMVs, 5 for down, and 2 of 8 rows), three
calls each, in that order, after one warm-up pass that compiles them (25 matched launches). ncu then profiles the
GEMVs' later calls (issue 22: why the int4 GEMV reads at 0.9-1.6 TB/s, issue-bound or latency-bound; issue 18: the
fp8 GEMV beside bf16). NCU_TINY=1: small matrices, for a CPU smoke test under TRITON_INTERPRET=1."""
import os

import torch

from llmserve.kernels import int4, linear
from llmserve.model.int4 import quantize_int4
from llmserve.model.linear import quantize_weight

TINY = os.environ.get("NCU_TINY") == "1"
SHAPES = ({"qkv": (192, 256), "down": (128, 512)} if TINY else
          {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)})


def runs(dev: str) -> list[tuple[str, object]]:
    """(label, call) for every matrix and weight kind."""
    out = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        gated = name == "down"
        x = torch.randn(1, 2 * k if gated else k, device=dev, dtype=torch.bfloat16)
        q8, s8 = quantize_weight(w, "fp8")
        q4 = quantize_int4(w, 128, symmetric=True)
        out += [(f"{name}:bf16", lambda x=x, w=w, g=gated: linear.gemv(x, w, gated=g)),
                (f"{name}:fp8", lambda x=x, q=q8, s=s8, g=gated: linear.gemv(x, q, s, gated=g)),
                (f"{name}:int4", lambda x=x, q=q4, g=gated: int4.w4gemv(x, q["weight"], q["weight_scale"], gated=g))]
        if not TINY:  # the paired-bf16 GEMV (inline PTX: not under the interpreter)
            out.append((f"{name}:int4_pairs", lambda x=x, q=q4, g=gated: int4.w4gemv(
                x, q["weight"], q["weight_scale"], gated=g, pairs=True)))
        if gated:  # the default takes the word kernel past K = 8,192: the byte kernel too
            out.append((f"{name}:int4_bytes", lambda x=x, q=q4: int4.w4gemv(x, q["weight"], q["weight_scale"],
                                                                          gated=True, words=False)))
        # 8 rows (issue 22's batch-8 target, 1.3x bf16; s21: 0.906x): the tensor-core kernels, bf16 and int4
        x8 = torch.randn(8, 2 * k if gated else k, device=dev, dtype=torch.bfloat16)
        out += [(f"{name}:bf16x8", lambda x=x8, w=w, g=gated: linear.wmm(x, w, gated=g)),
                (f"{name}:int4x8", lambda x=x8, q=q4, g=gated: int4.w4mm(x, q["weight"], q["weight_scale"], gated=g))]
    return out


def main() -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    calls = runs(dev)
    for _, fn in calls:  # compiles every variant before the profiled calls
        fn()
    for label, fn in calls:
        print(label, flush=True)
        for _ in range(3):
            fn()
    if dev == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
