"""bench.ptx_stats compiles our kernels for sm_90 on the CPU and counts their PTX (needs triton, not a GPU)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def _stats(*cases: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "bench.ptx_stats", *cases], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return [dict(re.findall(r"(\S[\w. ]*?)=(\d+)", line.split(" ", 2)[2]), case=line.split()[0], kernel=line.split()[1])
            for line in out.splitlines() if line.strip()]


def test_decode_kernels_compile_for_hopper_and_are_counted():
    rows = _stats("decode:8x1100:bf16", "decode:256x300:fp8")
    assert [(r["case"], r["kernel"]) for r in rows] == [
        ("decode:8x1100:bf16", "_decode_kernel"), ("decode:8x1100:bf16", "_merge_kernel"),
        ("decode:256x300:fp8", "_decode_kernel")]
    bf16, _, fp8 = rows
    assert int(bf16["mma"]) > 0 and int(bf16["ldmatrix"]) > 0 and int(bf16["registers"]) > 0
    assert 0 < int(bf16["sass loop"]) < int(bf16["sass"])  # what the GPU runs, its loop inside it
    assert "ld.shared bytes" not in bf16  # a 16-bit V tile reaches the tensor cores through ldmatrix
    assert int(fp8["cvt"]) > int(bf16["cvt"])  # e4m3 converted in the kernel


def test_the_fp8_gemm_uses_hopper_tensor_cores_and_exact_accumulation_costs_instructions():
    fast, exact = _stats("fp8mm:128x4096x4096:fast", "fp8mm:128x4096x4096:exact")
    assert fast["kernel"] == exact["kernel"] == "_tile_mm_kernel"
    assert int(fast["wgmma"]) > 0 and int(fast["registers"]) > 0
    assert int(exact["sass loop"]) > int(fast["sass loop"])  # the per-slice fp32 additions


def test_the_int4_tensor_core_kernel_loads_its_activations_as_asynchronous_vector_copies():
    """x as contiguous 2D tiles: the software pipeliner copies them (cp.async.cg, 16 bytes) instead of one 2-byte
    synchronous load per element inside the K loop (66 ld.global before; bench/results/2026-12-04-cpu-w4mm-loads)."""
    (w4,) = _stats("w4:64x4096x4096:128")
    assert w4["kernel"] == "_w4mm_kernel" and int(w4["wgmma"]) > 0
    assert int(w4["ld.global"]) <= 4 and int(w4["cp.async.cg"]) > 0


def test_the_paired_int4_gemv_compiles_for_hopper_in_fewer_instructions_than_the_word_gemv():
    """int4_pairs.py's inline PTX (bf16x2 arithmetic) passes ptxas for sm_90, and its loop runs fewer SASS
    instructions than the word-reading GEMV's over the same 16 x 1,024 tile (7.2 against 9.3 a weight byte on
    2026-12-05)."""
    words, pairs = _stats("w4:1x4096x4096:128:words", "w4:1x4096x4096:128:pairs")
    assert (words["kernel"], pairs["kernel"]) == ("_w4gemv_words_kernel", "_w4gemv_pairs_kernel")
    assert int(pairs["registers"]) > 0 and "spill bytes" not in pairs
    assert int(pairs["sass loop"]) < 0.85 * int(words["sass loop"])


def test_the_paired_int4_gemv_compiles_its_epilogues_and_a_plain_down_proj_runs_fewer_instructions():
    """The gate (`gate_out`) and rotary (`rope`) epilogues of the paired GEMV pass ptxas for sm_90 with no spill and
    add nothing to its loop; down_proj reading a plain row runs fewer SASS instructions a loop than computing the gate
    in its x loads (410 against 557 on 2026-12-06: what int4.GATE_OUT buys)."""
    gated, plain, gate_up, up_only, rope, qkv = _stats(
        "w4:1x4096x14336:128:pairs+gated", "w4:1x4096x14336:128:pairs", "w4:1x28672x4096:128:pairs+gate_out",
        "w4:1x28672x4096:128:pairs", "w4:1x6144x4096:128:pairs+rope", "w4:1x6144x4096:128:pairs")
    for r in (gated, plain, gate_up, rope):
        assert r["kernel"] == "_w4gemv_pairs_kernel" and int(r["registers"]) > 0 and "spill bytes" not in r
    assert int(plain["sass loop"]) < 0.85 * int(gated["sass loop"])
    assert int(gate_up["sass loop"]) <= int(up_only["sass loop"]) and int(rope["sass loop"]) <= int(qkv["sass loop"])


def test_the_int4_wgmma_kernel_compiles_for_hopper_with_its_wgmmas_in_flight():
    """The Gluon int4 matmul (llmserve/kernels/int4_wgmma.py) passes ptxas for sm_90 with no spill and without ptxas
    serializing its wgmmas (warning C7515, which its first draft drew on 2026-12-06 through a path around the K loop
    that set the accumulator's registers), at 8 and 128 rows, groups of 32-128, asymmetric weights, odd group counts."""
    rows = _stats("w4:8x6144x4096:128:wgmma", "w4:128x4096x14336:64:wgmma", "w4:40x200x896:32:wgmma+asym")
    for r in rows:
        assert r["kernel"] == "_w4wgmma_kernel" and int(r["wgmma"]) > 0 and int(r["registers"]) > 0
        assert "spill bytes" not in r and "wgmma serialized" not in r, r


def test_the_int4_mma_kernel_takes_half_the_paired_gemvs_instructions_a_word_and_compiles_its_folds():
    """int4_mma.py (Gluon, mma.sync) at 16 rows a program (`tile16`): its loop (two groups, 8 words of codes a thread
    each) against the paired GEMV's (a 16 x 512 tile: 8 words a thread), 271 against 277 SASS instructions on
    2026-12-07: half as many a word; the operands' layouts line up (the only shared memory: the warps' sums at the
    end), and at mma_config's launch shapes its folds, asymmetric weights, 8 rows and the cp.async ring pass ptxas
    without spills."""
    rows = _stats("w4:1x4096x4096:128:pairs", "w4:1x4096x4096:128:mma+tile16", "w4:1x4096x4096:128:mma+asym",
                  "w4:1x28672x4096:128:mma+gate_out+norm", "w4:1x6144x4096:128:mma+rope", "w4:1x4096x4096:128:mma+add",
                  "w4:8x4096x14336:128:mma", "w4:1x4096x4096:128:mma+staged")
    pairs, mma, *others = rows
    assert {r["kernel"] for r in [mma, *others]} == {"_w4mma_kernel"}
    assert int(mma["sass loop"]) / 2 < 0.6 * int(pairs["sass loop"])
    assert int(mma["mma"]) == 32  # two groups of 8 products of codes and 8 of x's sums
    for r in [mma, *others[:-1]]:  # shared memory only for the warps' sums: a few reads a 2 KiB of it (16 R rows)
        assert int(r["registers"]) > 0 and "spill bytes" not in r, r
        assert int(r["ld.shared"]) <= 10 * int(r["shared"]) // 2048, r
    staged = others[-1]  # the cp.async ring: the words copied to shared memory and read back
    assert int(staged["cp.async.cg"]) > 0 and "spill bytes" not in staged


_PDL_PTX = """
import json, sys, torch
from bench.ptx_stats import compile_launches
from llmserve.kernels import gemv
from llmserve.kernels.int4_pairs import w4gemv_pairs
N, K = 256, 1024
w, s = torch.zeros(N, K // 2, dtype=torch.uint8), torch.ones(N, K // 128, dtype=torch.float16)
x, w16 = torch.zeros(1, K, dtype=torch.bfloat16), torch.zeros(N, K, dtype=torch.bfloat16)
gemv.LATE_TRIGGER = True
calls = {"pairs": lambda pdl: w4gemv_pairs(x, w, s, None, None, False, None, pdl, (N, K, 128)),
         "gemv": lambda pdl: gemv.gemv(x, w16, pdl=pdl)}
out = {}
for pdl in (False, True):
    ptx = compile_launches(lambda: calls[sys.argv[1]](pdl))[0].asm["ptx"]
    ops = [line.split()[0] if line.split() else "" for line in ptx.splitlines()]
    find = lambda *names: [i for i, op in enumerate(ops) if op.rstrip(";").startswith(names)]
    out[pdl] = {"wait": find("griddepcontrol.wait"), "launch": find("griddepcontrol.launch_dependents"),
                "loads": find("ld.global", "cp.async.cg", "cp.async.ca")}
print(json.dumps(out))
"""


@pytest.mark.parametrize("kernel", ["pairs", "gemv"])
def test_a_late_pdl_kernel_waits_first_and_lets_the_next_kernel_in_after_its_loop(kernel):
    """Under PDL the paired int4 GEMV (and the 16/8-bit one with `gemv.LATE_TRIGGER`) waits for the previous grid
    before its first load and lets the next kernel launch once, after its loop's loads: launched at its start, the
    next kernel's programs took the SMs with room first (docs/performance.md, forty-fourth session). A plain launch
    has neither."""
    out = subprocess.run([sys.executable, "-c", _PDL_PTX, kernel], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    plain, pdl = json.loads(out.splitlines()[-1]).values()
    assert plain["wait"] == plain["launch"] == []
    assert len(pdl["wait"]) == len(pdl["launch"]) == 1
    assert pdl["wait"][0] < min(pdl["loads"]) and max(pdl["loads"]) < pdl["launch"][0]
