"""Issue 18: why the varlen kernel takes ~25% longer in this tree's engine than in 8ba3916's (call 3) though it
compiles alike and times alike alone. Runs the engine's first prefill step of 4 x 2,048-token prompts (as
kernel_check's profile: fp8 weights and KV cache, Llama-3.1-8B shape), catches layer 0's varlen launch, prints its
inputs (shapes, strides, dtypes, alignment, the work list) and times that launch alone in a CUDA graph on the
engine's own tensors, then on contiguous copies, then kernel_check's synthetic case of the same size; the step's
torch.profiler trace goes to $OUT/trace-$TREE.json (streams, overlaps). Run from the root of either tree (older
trees have varlen_attention in kernels.attention); bench is this tree's."""
import os
import tempfile
from pathlib import Path

import torch

from bench.common import SHAPES, graph_time_ms, write_random_checkpoint

try:
    from llmserve.kernels import varlen as mod
except ImportError:  # before 55bbcec
    from llmserve.kernels import attention as mod

caught: list = []
launch = mod.varlen_attention


def spy(*args, **kwargs):
    if not caught:
        caught.append((args, kwargs))
    return launch(*args, **kwargs)


def describe(name: str, v) -> str:
    if isinstance(v, torch.Tensor):
        return (f"{name}: {tuple(v.shape)} {v.dtype} strides {v.stride()} ptr%256 {v.data_ptr() % 256} "
                f"contiguous {v.is_contiguous()}")
    return f"{name}: {v!r}"[:200]


def us(fn) -> float:
    return graph_time_ms(lambda: [fn() for _ in range(8)], reps=10) * 1000 / 8


def main() -> None:
    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    mod.varlen_attention = spy
    shape = "llama3.1-8b"
    vocab = SHAPES[shape]["vocab_size"]
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), vocab, "fp8", shape=shape)
        knobs = {"dtype": "bfloat16", "max_batch_size": 256, "max_num_tokens": 8192, "pdl": "false",
                 "kv_cache_free_mem_fraction": 0.9, "kv_cache_dtype": "fp8", "max_model_len": 4096}
        eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
        caught.clear()
        g = torch.Generator().manual_seed(0)
        for i in range(4):
            ids = torch.randint(3, vocab - 3, (2048,), generator=g).tolist()
            eng.add_request(EngineRequest(f"r{i}", ids, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            eng.step()
            torch.cuda.synchronize()
        out = Path(os.environ.get("OUT", "."))
        prof.export_chrome_trace(str(out / f"trace-{os.environ.get('TREE', 'tree')}.json"))
        varlen = [e for e in prof.events() if e.name == "_varlen_kernel" and e.device_type.name == "CUDA"]
        print(f"step: {len(varlen)} varlen launches, device us each: "
              f"{[round(e.device_time_total) for e in varlen[:6]]} ...", flush=True)
        args, kwargs = caught[0]
        names = ["q", "kv_cache", "block_tables", "context_lens", "query_start", "qb_seq", "qb_start", "scale"]
        for n, v in [*zip(names, args), *kwargs.items()]:
            print(describe(n, v), flush=True)
        print("qb_seq head", args[5][:8].tolist(), "qb_start head", args[6][:8].tolist(), flush=True)
        print(f"engine inputs: {us(lambda: launch(*args, **kwargs)):.1f} us", flush=True)
        copies = [a.clone() if isinstance(a, torch.Tensor) and a.dim() and a.numel() < 1 << 28 else a for a in args]
        kw = {k: (v.clone() if isinstance(v, torch.Tensor) and k != "out" else v) for k, v in kwargs.items()}
        print(f"contiguous copies (cache kept): {us(lambda: launch(*copies, **kw)):.1f} us", flush=True)
        eng.shutdown()
    from bench.kernel_check.attention import _varlen_case

    for fresh in (0, 1):
        try:
            r = _varlen_case(4, 2048, kv_fp8=True, fp8_convert=2, fresh=fresh)
            print(f"synthetic fresh={fresh}: {r['ours_us']:.1f} us", flush=True)
        except (ImportError, TypeError) as exc:  # an older tree: kernels.varlen missing, no new_kv
            print(f"synthetic fresh={fresh}: {exc}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
