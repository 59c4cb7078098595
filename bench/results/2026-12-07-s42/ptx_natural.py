"""CPU (session 42): the paired int4 GEMV's SASS loop instructions with x's spread pairs (NATURAL_MAX_K 0) and natural
ones (any K), compiled for sm_90a as bench.ptx_stats compiles them. Needs natural-pairs.patch applied:
    git apply bench/results/2026-12-07-s42/natural-pairs.patch
    PYTHONPATH=. python bench/results/2026-12-07-s42/ptx_natural.py w4:1x4096x4096:128:pairs+add ...
    git checkout llmserve/kernels/int4_pairs.py"""
import sys

from bench.ptx_stats import case_call, compile_launches, sass_counts
from llmserve.kernels import int4_pairs

for case in sys.argv[1:]:
    loops = []
    for max_k in (0, 1 << 30):
        int4_pairs.NATURAL_MAX_K = max_k
        loops.append(sass_counts(compile_launches(case_call(case))[0].asm["cubin"])["sass loop"])
    print(f"{case}: spread {loops[0]}, natural {loops[1]}", flush=True)
