"""GPU: the Gluon W4A16 prototypes (w4wg.py, w4wg2.py) against the reference (dequantize + F.linear), then timed
over the Llama-3.1-8B linears (32 layers of each, past the L2, one CUDA graph each) beside w4mm (the engine's int4
path) and bf16 cuBLAS. Writes $OUT/r/w4wg.json as it goes.
    PYTHONPATH=. python bench/results/2026-12-06-s34/gluon/bench_w4wg.py"""

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from w4wg import w4wg  # noqa: E402
from w4wg2 import permute_x, w4wg2, x_permutation  # noqa: E402

from bench.common import SHAPES, graph_time_ms, linear_shapes  # noqa: E402
from llmserve.kernels import int4  # noqa: E402
from llmserve.model.int4 import quantize_int4  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp")) / "r"
OUT.mkdir(parents=True, exist_ok=True)
RES: dict = {"correct": {}, "time": {}, "meta": {}}
SECTIONS = os.environ.get("W4WG", "correct,time").split(",")


def save():
    (OUT / "w4wg.json").write_text(json.dumps(RES, indent=1))


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)).item()


def correct():
    torch.manual_seed(0)
    for (n, k), g, sym in [((4096, 4096), 128, True), ((4096, 4096), 128, False), ((6144, 4096), 64, True),
                           ((4096, 14336), 32, True), ((28672, 4096), 128, True)]:
        q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, g, sym)
        w = (q["weight"], q["weight_scale"], q.get("weight_min"))
        w16 = int4.dequantize_weight(*w) if hasattr(int4, "dequantize_weight") else None
        for M in (8, 40, 128, 200):
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            ref = int4.w4mm_dequant(x, *w)
            for v, asm, split in [(1, True, 1), (1, False, 1), (1, True, 2), (2, True, 1), (2, True, 2), (3, True, 1),
                                  (3, True, 2)]:
                if v >= 2 and g != 128:
                    continue
                if True:
                    key = f"{n}x{k} g{g} {'sym' if sym else 'asym'} M{M} v{v} asm{int(asm)} split{split}"
                    try:
                        y = (w4wg(x, *w, asm=asm, split=split, convert_bytes=not asm) if v == 1 else
                             w4wg2(x, *w, split=split, relabel=v == 2))
                        torch.cuda.synchronize()
                        RES["correct"][key] = rel_err(y, ref)
                    except Exception as exc:  # noqa: BLE001
                        RES["correct"][key] = f"fail {type(exc).__name__}: {str(exc)[:300]}"
                    print(key, RES["correct"][key], flush=True)
        del w16
    save()


def configs(M):
    """(kernel, kwargs): v1 at 64 rows a program; v2 at 64 and 128 (8 warps), K split 1-4 ways."""
    bm = max(8, min(128, 1 << (M - 1).bit_length()))
    out = [(w4wg, dict(block_m=bm, split=sp, stages=3)) for sp in (1, 2, 4)]
    out.append((w4wg, dict(block_m=bm, asm=False, convert_bytes=True)))
    for bn, warps in ((64, 4), (128, 8)):
        for split in (1, 2, 4):
            for stages in ((4, 6) if M <= 16 else (4,)):
                out.append((w4wg2, dict(block_m=bm, block_n=bn, warps=warps, split=split, stages=stages,
                                        x_permuted=True)))
                out.append((w4wg2, dict(block_m=bm, block_n=bn, warps=warps, split=split, stages=stages,
                                        relabel=False)))
    return out


def _time(fn, x, items) -> float:
    return graph_time_ms(lambda: [fn(x, *t) for t in items], reps=10)


def timing():
    cfg = SHAPES["llama3.1-8b"]
    layers_n = cfg["num_hidden_layers"]
    rows = [int(v) for v in os.environ.get("W4WG_ROWS", "8,16,64,128,256").split(",")]
    for name, (n, k) in linear_shapes(cfg).items():
        t0 = time.time()
        qs = [quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
              for _ in range(layers_n)]
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers_n)]
        for M in rows:
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            r = RES["time"].setdefault(f"{name}/M{M}", {})
            wq = [(q["weight"], q["weight_scale"]) for q in qs]
            r["w4mm"] = _time(int4.w4mm, x, wq)
            r["bf16"] = _time(F.linear, x, [(w,) for w in ws])
            perm = x_permutation(x.device)
            r["permute_x"] = _time(permute_x, x, [(perm,)] * layers_n)
            for kern, c in configs(M):
                key = ("v2," if kern is w4wg2 else "v1,") + ",".join(f"{a}={b}" for a, b in c.items())
                try:
                    fn = partial(kern, **c)
                    r[key] = _time(fn, x, wq)
                except Exception as exc:  # noqa: BLE001
                    r[key] = f"fail {type(exc).__name__}: {str(exc)[:200]}"
            num = {a: b for a, b in r.items() if isinstance(b, float) and a not in ("w4mm", "bf16", "permute_x")}
            best = min(num, key=num.get) if num else None
            print(f"{name} M={M}: w4mm {r['w4mm']:.3f} bf16 {r['bf16']:.3f} permute {r['permute_x']:.3f} best {best} "
                  f"{num.get(best, float('nan')):.3f} ms", flush=True)
            save()
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        del qs, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    RES["meta"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "triton": __import__("triton").__version__}
    if "correct" in SECTIONS:
        correct()
    if "time" in SECTIONS:
        timing()
    save()
