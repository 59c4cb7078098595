"""GPU: w4wg4.py's x-through-registers variant (xreg: x's columns loaded permuted, W's bytes 16 a thread, the
fragment relabelled) against int4_wgmma.py as landed, at 2-16 rows: errors against dequantize + F.linear, then times
over the Llama-3.1-8B linears (32 layers each, one CUDA graph each).   $OUT/r/xreg.json"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import w4wg4  # noqa: E402

from bench.common import SHAPES, graph_time_ms, linear_shapes  # noqa: E402
from llmserve.kernels import int4  # noqa: E402
from llmserve.kernels.int4_wgmma import w4wgmma  # noqa: E402
from llmserve.model.int4 import quantize_int4  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp")) / "r"
OUT.mkdir(parents=True, exist_ok=True)
RES: dict = {"correct": {}, "time": {}}


def main():
    for sym in (True, False):
        q = quantize_int4(torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym)
        w = (q["weight"], q["weight_scale"], q.get("weight_min"))
        for M in (2, 8, 13, 16):
            x = torch.randn(M, 14336, device="cuda", dtype=torch.bfloat16)
            ref = int4.w4mm_dequant(x, *w).float()
            y = w4wg4.w4wgmma(x, *w, None, (4096, 14336, 128), xreg=True).float()
            RES["correct"][f"{'sym' if sym else 'asym'} M{M}"] = ((y - ref).abs().max() / ref.abs().max()).item()
    print(RES["correct"], flush=True)
    cfg = SHAPES["llama3.1-8b"]
    for name, (n, k) in linear_shapes(cfg).items():
        qs = [quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
              for _ in range(cfg["num_hidden_layers"])]
        for M in (8, 16):
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            sz = (n, k, 128)
            r = RES["time"][f"{name}/M{M}"] = {
                "landed": graph_time_ms(lambda x=x, qs=qs, sz=sz: [
                    w4wgmma(x, q["weight"], q["weight_scale"], None, None, sz) for q in qs], reps=10),
                "xreg": graph_time_ms(lambda x=x, qs=qs, sz=sz: [
                    w4wg4.w4wgmma(x, q["weight"], q["weight_scale"], None, None, sz, xreg=True) for q in qs], reps=10)}
            print(name, M, r, flush=True)
        (OUT / "xreg.json").write_text(json.dumps(RES, indent=1))
        torch.cuda.empty_cache()


main()
