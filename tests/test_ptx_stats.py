"""bench.ptx_stats compiles our kernels for sm_90 on the CPU and counts their PTX (needs triton, not a GPU)."""

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


def test_weight_kernels_under_pdl_ask_l2_for_their_first_lines_and_plain_launches_do_not():
    plain, pdl, split_k = _stats("gemv:fp8:6144x4096", "gemv:fp8:6144x4096:pdl", "w4:8x4096x4096:128:pdl")
    assert "prefetch" not in plain
    # 16 rows x 16 lines of 128 bytes (32 KiB) over 128 threads: two prefetches a thread, before the PDL wait
    assert int(pdl["prefetch"]) == 2 and int(pdl["registers"]) == int(plain["registers"])
    assert pdl["trigger first"] == "1"  # PDL_TRIGGER_FIRST: the next kernel may launch before this one waits
    assert split_k["kernel"] == "_w4mm_kernel" and int(split_k["prefetch"]) > 0
    plain, pf = (r for r in _stats("decode:1x300:fp8", "decode:1x300:fp8:prefetch") if r["kernel"] == "_decode_kernel")
    assert "prefetch" not in plain
    # 256 one-warp programs share o_proj's 16 MiB of e4m3: 512 lines each, 16 a lane, the attention loop unchanged
    assert int(pf["prefetch"]) == 16 and pf["longest loop"] == plain["longest loop"]


def test_prefetch_lines_stay_within_a_programs_budget_and_its_share_of_a_row():
    import torch

    from llmserve.kernels import pdl

    w16, w8 = torch.empty(6144, 4096, dtype=torch.bfloat16), torch.empty(6144, 4096, dtype=torch.int8)
    assert pdl.prefetch_args(w16, 16, pdl=False)["PREFETCH"] == 0
    assert pdl.prefetch_args(w16, 16, pdl=True) == {"PREFETCH": 16, "STEP": 64}  # 16 x 16 x 128 B = 32 KiB
    assert pdl.prefetch_args(w8, 64, pdl=True) == {"PREFETCH": 4, "STEP": 128}
    assert pdl.prefetch_args(torch.empty(576, 576, dtype=torch.bfloat16), 16, True)["PREFETCH"] == 8  # 9 lines a row
    assert pdl.prefetch_args(w8, 16, True, row_bytes=512)["PREFETCH"] == 4  # a split-K program's 512 bytes
    assert pdl.prefetch_args(w8, 16, True, row_bytes=64)["PREFETCH"] == 0  # less than a line
    assert pdl.prefetch_share(None, 256) == (0, 0)
    assert pdl.prefetch_share(torch.empty(4096, 4096, dtype=torch.float8_e4m3fn), 256) == (131072, 512)
    assert pdl.prefetch_share(torch.empty(4096, 4096, dtype=torch.bfloat16), 100) == (262144, 1024)  # capped
    assert pdl.prefetch_share(torch.empty(7, 100, dtype=torch.bfloat16), 256) == (10, 1)
    assert pdl.prefetch_share(torch.empty(64, 64, dtype=torch.bfloat16).t(), 4) == (0, 0)  # strided: not asked
