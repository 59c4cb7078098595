"""Which Triton kernels and torch ops one decode step of one row launches on the fast path, per weight format (CPU,
Triton's interpreter: the same Python as on a GPU, each launch counted instead of timed). Issue 22 asked where an
int4 batch-1 step's time beside its GEMVs goes (4.26 ms a token, GEMVs 2.94 of it; bf16's step has 0.45 ms
besides): if int4 launched extra kernels or copies, they would show here.

    PYTHONPATH=. .venv/bin/python bench/results/2026-12-05-cpu-s22/step_ops.py bf16 int4_sym int4_asym fp8

INTER sets the tiny model's intermediate size (8448: down_proj's K past 8,192, where int4 reads 32-bit words)."""
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from llmserve.model.attention import AttentionMetadata  # noqa: E402
from llmserve.model.llama import load_model  # noqa: E402

INSIDE = [0]  # inside a kernel launch: the interpreter's own tensor ops are not the step's


class TorchOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not INSIDE[0]:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def tiny_model(quant: str, folder: Path):
    cfg = {"vocab_size": 300, "hidden_size": 256, "intermediate_size": int(os.environ.get("INTER", 512)),
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "llmserve_random_init": {"seed": 3, "std": 0.1}}
    if quant != "bf16":
        cfg["quantization"] = {"mode": quant, **({"group_size": 64} if quant.startswith("int4") else {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    model = load_model(folder, torch.float16, torch.device("cpu"), "interpret")  # the interpreter has no bf16
    model.init_rope(256, torch.device("cpu"))
    return model


def decode_step_launches(quant: str) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(quant, Path(tmp))
    cache = torch.zeros(2, 2, 8, 16, 2, 64, dtype=torch.float16)
    kernels, ops, run = collections.Counter(), TorchOps(), interpreter.InterpretedFunction.run

    def counted(self, *args, **kwargs):
        kernels[self.fn.__name__] += 1
        INSIDE[0] += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            INSIDE[0] -= 1

    with torch.inference_mode():
        model(torch.arange(5), torch.arange(5), cache, AttentionMetadata.for_prefill([5], 16, torch.device("cpu"),
                                                                                     group=2, head_dim=64))
        meta = AttentionMetadata(slot_mapping=torch.tensor([5], dtype=torch.int32),
                                 block_tables=torch.tensor([[0]], dtype=torch.int32),
                                 context_lens=torch.tensor([6], dtype=torch.int32), query_lens=[1],
                                 context_lens_host=[6], decode_only=True, max_context_len=6, context_bound=256)
        interpreter.InterpretedFunction.run = counted
        try:
            with ops:
                model.decode_layers(torch.tensor([7]), torch.tensor([5]), cache, meta)
        finally:
            interpreter.InterpretedFunction.run = run
    return dict(kernels), dict(ops.counts.most_common())


if __name__ == "__main__":
    for quant in sys.argv[1:]:
        kernels, ops = decode_step_launches(quant)
        print(f"{quant}: kernels (2 layers) {kernels}\n    torch ops outside kernels {ops}", flush=True)
