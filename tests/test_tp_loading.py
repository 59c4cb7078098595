"""A tensor-parallel rank reads only its slice of the checkpoint (issue 19): the tensors it reads with safetensors'
get_slice are those it would cut from the whole loaded model, for 16-bit and every quantized format TP slices,
and it reads the replicated tensors plus 1/tp of the layers' bytes. fp8's row-parallel activations quantize as
one process's."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from llmserve.model import loading
from llmserve.model.linear import fake_quant_fp8_per_token
from llmserve.model.llama import load_model
from llmserve.model.pipeline_parallel import keep_stage
from llmserve.model.quantize import quantize_checkpoint
from llmserve.model.tensor_parallel import shard_empty, shard_model
from tests.safetensors_spy import SpyFile
from tests.test_tensor_parallel import tiny_checkpoint

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tpl") / "tiny")


def int8_group_checkpoint(src, out, group: int = 16):
    """Codes and float16 scales per group of 16 inputs (the GGUF import's Q8_0 layout; there is no quantizer)."""
    state = load_file(next(src.glob("*.safetensors")))
    for key in [k for k in state if k.split(".")[-2] in PROJ]:
        w = state.pop(key).float()
        n, k = w.shape
        s = (w.reshape(n, k // group, group).abs().amax(-1) / 127).half()
        q = torch.round(w.reshape(n, k // group, group) / s.float()[..., None]).clamp(-127, 127)
        state[key] = q.reshape(n, k).to(torch.int8).contiguous()
        state[key.removesuffix("weight") + "weight_scale"] = s.contiguous()
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization"] = {"mode": "int8_group_sym"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def checkpoint_of(tiny, tmp_path, mode):
    if mode is None:
        return tiny
    if mode == "int8_group_sym":
        return int8_group_checkpoint(tiny, tmp_path / mode)
    return quantize_checkpoint(tiny, tmp_path / mode, mode, group_size=32)


@pytest.mark.parametrize("mode", [None, "int8_wo", "int4_sym", "int4_asym", "int8_group_sym", "fp8"])
@pytest.mark.parametrize("stages", [1, 2])
def test_a_rank_reads_the_tensors_it_would_cut_from_the_whole_model(tiny, tmp_path, mode, stages):
    """Bit for bit (dtype included) against today's load-then-slice, every rank, alone and as a pipeline
    stage's rank (the last stage: its layer and the head). 16 bits: float32 weights cast to bfloat16 on read."""
    ckpt = checkpoint_of(tiny, tmp_path, mode)
    dtype = torch.bfloat16 if mode is None else torch.float32
    cpu = torch.device("cpu")
    def stage(m):
        return keep_stage(m, stages - 1, stages)

    for rank in (0, 1):
        whole = shard_model(load_model(ckpt, dtype, cpu, "off", select=stage), rank, 2)
        read = load_model(ckpt, dtype, cpu, "off", select=lambda m, r=rank: shard_empty(stage(m), r, 2),
                          prepare=lambda m, r=rank: shard_model(m, r, 2))
        want, got = whole.state_dict(), read.state_dict()
        assert list(got) == list(want) and read.args == whole.args
        for key, t in want.items():
            assert got[key].dtype == t.dtype and torch.equal(got[key], t), (mode, rank, key)
        assert read.layers[0].self_attn.nh == 2 and read.layers[0].mlp.down_proj.linear.in_features == 64


@pytest.mark.parametrize("mode", [None, "int4_asym"])
def test_a_rank_reads_the_replicated_tensors_and_half_of_the_layers(tiny, tmp_path, monkeypatch, mode):
    ckpt = checkpoint_of(tiny, tmp_path, mode)
    real = loading.safe_open
    counts: list[int] = []
    monkeypatch.setattr(loading, "safe_open", lambda path, framework: SpyFile(real(path, framework), counts=counts))
    load_model(ckpt, torch.float32, torch.device("cpu"), "off")
    whole = sum(counts)
    state = load_file(next(ckpt.glob("*.safetensors")))
    parallel = sum(t.nbytes for k, t in state.items() if k.split(".")[-2] in PROJ
                   and not (k.split(".")[-2] in ("o_proj", "down_proj") and t.dim() == 1))  # per-row scales: whole
    assert whole == sum(t.nbytes for t in state.values())
    for rank in (0, 1):
        counts.clear()
        load_model(ckpt, torch.float32, torch.device("cpu"), "off", select=lambda m, r=rank: shard_empty(m, r, 2))
        assert sum(counts) == whole - parallel // 2
    print(f"{mode or 'float32'}: whole checkpoint {whole} bytes read, a TP2 rank {whole - parallel // 2} "
          f"({(whole - parallel // 2) / whole:.0%}; layers' parallel tensors {parallel})")


def _quant_worker(rank, port, x, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        reduce = lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX)  # noqa: E731 - as AllReduceLinear sets it
        results[rank] = fake_quant_fp8_per_token(x[:, rank * 32:(rank + 1) * 32], reduce)
    finally:
        dist.destroy_process_group()


def test_a_row_parallel_rank_quantizes_its_activations_as_one_process_does():
    """Each rank's e4m3-rounded activations are, bit for bit, its columns of the whole row's: the max of the
    ranks' amax is the row's amax. Row 0's largest value lies in rank 1's columns, row 1's in rank 0's."""
    x = torch.randn(3, 64, dtype=torch.float32)
    x[0, 40], x[1, 3] = 30.0, -25.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_quant_worker, args=(port, x, results), nprocs=2, join=True)
    one = fake_quant_fp8_per_token(x)
    assert torch.equal(torch.cat([results[0], results[1]], dim=1), one)
    assert not torch.equal(fake_quant_fp8_per_token(x[:, :32]), one[:, :32])  # a rank's own scale would differ
