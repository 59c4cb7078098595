"""Session 26, call 5 (what the last 85 s of device time held): the paired-bf16 int4 GEMV against the byte and word
GEMVs on Llama-3.1-8B's qkv and gate_up (32 layers' weights each, g128 symmetric, one CUDA graph), after its tests."""
import torch

from bench.common import graph_time_ms
from llmserve.kernels.int4 import w4gemv
from llmserve.model.int4 import quantize_int4


def run(name: str, n: int, k: int) -> None:
    layers = [quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
              for _ in range(32)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    gb = sum(t.numel() * t.element_size() for q in layers for t in q.values()) / 1e9
    for kind in ("bytes", "words", "pairs"):
        ms = graph_time_ms(lambda kind=kind: [w4gemv(x, q["weight"], q["weight_scale"], words=kind == "words",
                                                      pairs=kind == "pairs") for q in layers], reps=10)
        print(f"{name} {kind}: {ms:.3f} ms for 32 layers, {gb / ms:.2f} TB/s", flush=True)


if __name__ == "__main__":
    run("qkv", 6144, 4096)
    run("gate_up", 28672, 4096)
