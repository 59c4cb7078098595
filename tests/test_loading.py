"""Shard-by-shard loading (llmserve/model/loading.py) of a sharded checkpoint saved by transformers.

The streamed model holds exactly the weights of the in-memory path it replaced (hf_to_ours over every tensor),
its greedy tokens equal transformers', and host memory above the loaded weights stays under two shards' worth,
where the in-memory path needs about the whole checkpoint again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from llmserve.model.llama import load_model
from llmserve.model.loading import our_key, read_index
from llmserve.model.weights import hf_to_ours, load_safetensors
from tests.safetensors_spy import SpyFile

# ~230 MB in float32 over ~12 shards of <= 20 MB: one decoder layer (16.8 MB) straddles two shards most times.
SHAPE = dict(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256)
SHARD = "20MB"
MB = 1 << 20


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, object]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(out, max_shard_size=SHARD)
    return out, model


# Run in a fresh process: memory freed earlier in this one stays with the allocator and would hide a peak. The
# float32 checkpoint loads as bfloat16, so each tensor is copied off the file's memory map as on a GPU (a float32
# tensor on the CPU would stay a view of the file, its pages resident for as long as the model lives).
MEASURE = """
import json, sys
from pathlib import Path
import torch
from llmserve.model.llama import LlamaModel, ModelArgs, load_model
from llmserve.model.weights import cast, hf_to_ours, load_safetensors

def rss(key):
    return next(int(x.split()[1]) * 1024 for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith(key + ":"))

ckpt, path = Path(sys.argv[1]), sys.argv[2]
with torch.device("meta"):  # torch's code for the meta device loads on first use (~70 MB): not the loader's
    LlamaModel(ModelArgs.from_hf_config(json.loads((ckpt / "config.json").read_text())))
Path("/proc/self/clear_refs").write_text("5")  # the peak from here on (Linux)
before = rss("VmRSS")
if path == "streamed":
    kept = load_model(ckpt, torch.bfloat16, torch.device("cpu")).state_dict()
else:  # what load_model did before
    state = hf_to_ours(load_safetensors(ckpt), int(sys.argv[3]), False)
    kept = {k: cast(k, v, torch.bfloat16) for k, v in state.items()}
weights = sum(t.numel() * t.element_size() for t in kept.values())
print(json.dumps({"peak": rss("VmHWM") - before, "weights": weights}))
"""


def _peak(ckpt: Path, path: str) -> dict[str, int]:
    """Peak host memory of loading `ckpt` the `path` way, above the process's RSS before it, and the weights' bytes."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ckpt), path, str(SHAPE["num_hidden_layers"])],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_packed_parts_straddle_shards(sharded):
    index = read_index(sharded[0])
    assert len(index) >= 8
    files = {}
    for path, tensors in index.items():
        for k in tensors:
            name = our_key(k)
            if name and name[2] > 1:
                files.setdefault(name[0], set()).add(path)
    assert any(len(f) > 1 for f in files.values())  # the pending-part case is exercised


def test_streamed_weights_equal_the_in_memory_path(sharded):
    ckpt, _ = sharded
    model = load_model(ckpt, torch.float32, torch.device("cpu"))
    ref = hf_to_ours(load_safetensors(ckpt), SHAPE["num_hidden_layers"], False)
    got = model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


def test_host_memory_stays_under_two_shards_above_the_weights(sharded):
    ckpt, _ = sharded
    shard = max(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    streamed = _peak(ckpt, "streamed")
    # On the CPU the loaded weights are host memory too; everything above them is the loader's.
    assert streamed["peak"] - streamed["weights"] < 2 * shard + 16 * MB, (streamed, shard)
    # The measure can tell: reading every tensor first, as the in-memory path did, costs about the checkpoint again.
    whole = _peak(ckpt, "in_memory")
    assert whole["peak"] - whole["weights"] > 2 * shard + 16 * MB, (whole, shard)


def test_greedy_tokens_equal_transformers(sharded):
    ckpt, hf = sharded
    engine = TorchEngine(ServingConfig.of(device="cpu", dtype="float32", kv_cache_memory_bytes=64 * MB), ckpt)
    prompt = torch.randint(10, SHAPE["vocab_size"], (9,), generator=torch.Generator().manual_seed(1)).tolist()
    engine.add_request(EngineRequest("a", prompt, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)))
    got = []
    while engine.has_work():
        got += [t for o in engine.step() for t in o.new_token_ids]
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 9:]
    assert got == ref.tolist()


def test_missing_and_unused_tensors_are_refused_before_reading(sharded, tmp_path):
    ckpt, _ = sharded
    for f in ckpt.iterdir():
        if f.suffix != ".json" or f.name == "config.json":
            shutil.copy2(f, tmp_path / f.name)
    save_file({"model.layers.0.mlp.up_proj.bias": torch.zeros(SHAPE["intermediate_size"])},
              tmp_path / "zz-extra.safetensors")
    with pytest.raises(ValueError, match=r"does not use: \['layers.0.mlp.gate_up_proj.bias'"):
        load_model(tmp_path, torch.float32, torch.device("cpu"))
    (tmp_path / "zz-extra.safetensors").unlink()
    sorted(tmp_path.glob("*.safetensors"))[0].unlink()  # a shard lost
    with pytest.raises(ValueError, match="lacks"):
        load_model(tmp_path, torch.float32, torch.device("cpu"))



def test_a_pipeline_stage_reads_only_its_own_tensors(tiny_hf_checkpoint, monkeypatch):
    """select (keep_stage on the empty model) gives each stage exactly the weights of loading everything and then
    slicing, reads none of the other stage's tensors, and the last stage's tied head (no embedding there) loads
    the embedding's tensor as its own."""
    import llmserve.model.loading as loading
    from llmserve.model.pipeline_parallel import keep_stage, stage_layers

    read: list[str] = []
    real_open = loading.safe_open

    def load(**kwargs):
        return load_model(tiny_hf_checkpoint, torch.float32, torch.device("cpu"), kernel_mode="off", **kwargs)

    full = load()
    spans = stage_layers(full.args.num_layers, 2)
    wants = [keep_stage(load(), stage, 2).state_dict() for stage in range(2)]  # load everything, then slice
    monkeypatch.setattr(loading, "safe_open", lambda *a, **k: SpyFile(real_open(*a, **k), keys=read))
    for stage, (span, want) in enumerate(zip(spans, wants)):
        read.clear()
        got = load(select=lambda m, s=stage: keep_stage(m, s, 2)).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert {int(k.split(".")[2]) for k in read if k.startswith("model.layers.")} == set(span)
        assert ("model.norm.weight" in read) == (stage == 1) == ("lm_head.weight" in got)
        assert read.count("model.embed_tokens.weight") == 1  # stage 0's embedding, stage 1's tied head
    assert torch.equal(got["lm_head.weight"], full.embed_tokens.weight)
