"""The sampler on a batch of chat-style sampled rows, this tree's against another's (same inputs, one process,
alternating).
Rows sample with temperature 0.7 and top_p 0.9 (half of them the guide's stable preset: top_k 40, repetition
penalty 1.1), each with a HISTORY-token context (default 160) of which 32 generated; ms a step (median of 7 steps,
each row one token longer than at the step before; this tree's sampler keeps a token history across them, as the
engine does), and the penalties alone (`*_penalties`: host and device work of applying them to a step's
logits), on the GPU where there is one (the logits there, synchronised before each clock read).
    python sampler_ab.py PREV_TREE OUT.json [ROWS] [VOCAB] [HISTORY]"""
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch

from llmserve.engine import sampler as new
from llmserve.engine.penalties import TokenHistory
from llmserve.engine.sampling_params import SamplingParams

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def load_prev(tree: str):
    spec = importlib.util.spec_from_file_location("prev_sampler", Path(tree) / "llmserve/engine/sampler.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class Row:
    """A sequence as the token history sees it."""

    status = "running"


def workload(rows: int, vocab: int, length: int):
    rng = random.Random(0)
    params = [SamplingParams(temperature=0.7, top_p=0.9, top_k=40 if i % 2 else 0,
                             repetition_penalty=1.1 if i % 2 else 1.0, seed=i) for i in range(rows)]
    return params, [[rng.randrange(vocab) for _ in range(length)] for _ in range(rows)], [Row() for _ in range(rows)]


def batch(mod, params, hist, owners, history):
    gens = [torch.Generator(DEV).manual_seed(i) for i in range(len(params))]
    banned = [[] for _ in params]
    if mod is new:
        return mod.SamplingBatch(params, hist, [len(h) - 32 for h in hist], gens, banned, [len(h) for h in hist],
                                 owners, history)
    return mod.SamplingBatch(params, [h[-32:] for h in hist], hist, gens, banned)


def main() -> None:
    prev, path = load_prev(sys.argv[1]), sys.argv[2]
    rows, vocab, length = [int(a) for a in sys.argv[3:6]] + [256, 128256, 160][len(sys.argv[3:6]):]
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 4).to(DEV)
    params, hist, owners = workload(rows, vocab, length)
    history = TokenHistory(rows, torch.device(DEV))
    times = {"prev": [], "new": [], "prev_penalties": [], "new_penalties": []}
    same = True
    for step in range(8):
        for h in hist:
            h.append(step)
        tokens = {}
        for name, mod in (("prev", prev), ("new", new)):
            b, x = batch(mod, params, hist, owners, history), logits.clone()
            if DEV == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens[name] = mod.sample(x, b)[0]  # ends with a device-to-host read of the tokens
            elapsed = (time.perf_counter() - t0) * 1e3
            b, x = batch(mod, params, hist, owners, history), logits.clone()
            if DEV == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            b.penalise(x) if mod is new else mod.apply_penalties(x, b)
            if DEV == "cuda":
                torch.cuda.synchronize()
            if step:  # step 0 uploads every context to the history
                times[name].append(elapsed)
                times[name + "_penalties"].append((time.perf_counter() - t1) * 1e3)
        same &= tokens["prev"] == tokens["new"]
    res = {k: sorted(v)[3] for k, v in times.items()}
    res.update(rows=rows, vocab=vocab, context=length + 8, same_tokens=same, torch=torch.__version__,
               threads=torch.get_num_threads(), device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu")
    print(res)
    Path(path).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
