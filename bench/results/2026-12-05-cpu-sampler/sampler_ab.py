"""The sampler on a batch of chat-style sampled rows, this tree's against another's (same inputs, one process,
alternating): python bench/results/2026-12-05-cpu-sampler/sampler_ab.py PREV_TREE OUT.json [ROWS] [VOCAB].
Rows sample with temperature 0.7 and top_p 0.9 (half of them the guide's stable preset: top_k 40, repetition
penalty 1.1), each with a 160-token history and 32 tokens generated; ms a call (median of 7), on the GPU where
there is one (the logits there, synchronised before each clock read)."""
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch

from llmserve.engine import sampler as new
from llmserve.engine.sampling_params import SamplingParams

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def load_prev(tree: str):
    spec = importlib.util.spec_from_file_location("prev_sampler", Path(tree) / "llmserve/engine/sampler.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def batch(mod, rows: int, vocab: int):
    rng = random.Random(0)
    params = [SamplingParams(temperature=0.7, top_p=0.9, top_k=40 if i % 2 else 0,
                             repetition_penalty=1.1 if i % 2 else 1.0, seed=i) for i in range(rows)]
    hist = [[rng.randrange(vocab) for _ in range(160)] for _ in range(rows)]
    out = [h[-32:] for h in hist]
    gens = [torch.Generator(DEV).manual_seed(i) for i in range(rows)]
    return mod.SamplingBatch(params, out, hist, gens, [[] for _ in range(rows)])


def main() -> None:
    prev, path = load_prev(sys.argv[1]), sys.argv[2]
    rows, vocab = (int(sys.argv[3]) if len(sys.argv) > 3 else 256), (int(sys.argv[4]) if len(sys.argv) > 4 else 128256)
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 4).to(DEV)
    times = {"prev": [], "new": []}
    tokens = {}
    for _ in range(7):
        for name, mod in (("prev", prev), ("new", new)):
            b, x = batch(mod, rows, vocab), logits.clone()
            if DEV == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens[name] = mod.sample(x, b)[0]  # ends with a device-to-host read of the tokens
            times[name].append((time.perf_counter() - t0) * 1e3)
    res = {k: sorted(v)[3] for k, v in times.items()}
    res.update(rows=rows, vocab=vocab, same_tokens=tokens["prev"] == tokens["new"], torch=torch.__version__,
               threads=torch.get_num_threads(), device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu")
    print(res)
    Path(path).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
