"""bench/run/floor.py's int4 floor (issue 22's targets are set against it): what a batch-1 step reads, and the
one-row kernel each weight goes through, on a tiny shape under Triton's CPU interpreter."""

import os

import pytest
import torch
from torch.nn import functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_kernels import DEV, DT, rel  # noqa: E402

from bench.run.floor import floor_weights, one_row_kernel, read_tensors  # noqa: E402
from llmserve.model.int4 import dequantize_int4  # noqa: E402

TINY = {"hidden_size": 256, "intermediate_size": 384, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 320, "num_hidden_layers": 1}


def test_the_int4_floor_reads_codes_and_group_scales_and_each_weight_goes_through_its_kernel():
    weights = floor_weights(TINY, "int4_sym", torch.Generator().manual_seed(0), device="cpu")
    codes = [w for w, s, _ in weights if s is not None]
    assert [tuple(w.shape) for w in codes] == [(512, 128), (256, 128), (768, 128), (256, 192)]  # qkv, o, gate_up, down
    assert all(w.dtype == torch.uint8 for w in codes) and weights[-1][0].shape == (320, 256)
    tensors = read_tensors(weights, "int4_sym")
    assert len(tensors) == 2 * 4 + 1 and [t.shape[1] for t in tensors[5:]] == [2, 2, 2, 3]  # groups of 128
    assert len(read_tensors(floor_weights(TINY, "fp8", torch.Generator(), device="cpu"), "fp8")) == 5
    gen = torch.Generator().manual_seed(1)
    xs = {k: torch.randn(1, k, generator=gen).to(DEV, DT) for k in (256, 384, 768)}
    kernel = one_row_kernel("int4_sym", xs)
    for w, s, gated in weights[:-1]:
        x = xs[2 * 2 * w.shape[1] if gated else 2 * w.shape[1]]
        h = F.silu(x[:, :384]) * x[:, 384:] if gated else x
        ref = F.linear(h.float(), dequantize_int4(w, s, None))
        assert rel(kernel(w.to(DEV), s.to(DEV), gated), ref) < 2e-2
    lm = weights[-1][0].to(DEV, DT)  # the 16-bit lm_head: the 16-bit GEMV
    assert rel(kernel(lm, None, False), F.linear(xs[256].float(), lm.float())) < 2e-2
