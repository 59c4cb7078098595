#!/bin/bash
# Issue 18 (and 22: the int4 kernels share the prologue): the twenty-third session's changes to decode graphs of up to
# 16 rows (llmserve/kernels/pdl.py), untimed until this call. About 9 minutes. 0) The GPU tests of the kernels they
# touch, each with plain launches and with PDL (the changes act only under PDL), and decode attention with and without
# asking for o_proj's weights (bit for bit). 1) `kernel_check --sections prefetch`: on one engine per weight mode
# (fp8, then bf16; Llama-3.1-8B shape) the decode graphs captured again for each case BYTES:LINES:FIRST, added one at
# a time: everything off (the tree before), a kernel letting the next launch before it waits (FIRST), a weight
# kernel's programs asking L2 for 32 KiB of their rows before their wait (BYTES), decode attention asking for the
# o_proj after it (LINES); then off again. Each: the median decode step of 1 and 8 requests and the batch-1 graph
# replay. 2) The read floor of the same shape in the same call (the batch-1 targets are ratios to it: bf16 1.05x, fp8
# 1.1x; s14: 1.103x, 1.347x). Carry .carry. Any case slower than the one before it: set its constant back (pdl.py,
# kernels/__init__.py).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 90 python3 -m pytest -q -x tests/test_kernels.py tests/test_kernels_int4.py tests/test_kernels_attention.py \
  tests/test_kernels_model.py -k "pdl or prefetch or gemv or wmm or decode_attention or fast_path" > $OUT/r/tests.log 2>&1
# One process a weight mode (each compiles its own kernel variants, and every case recompiles what it changes); the
# report is saved after each case, so a timeout keeps the cases before it. int4 (issue 22) if a later call has time.
PREFETCH_CASES=0:0:0,0:0:1,32768:0:1,32768:1024:1,0:0:0 BENCH_MODES=fp8 timeout 220 python3 -m bench.kernel_check \
  --sections prefetch --out $OUT/r/prefetch-fp8 > $OUT/r/prefetch-fp8.log 2>&1
PREFETCH_CASES=0:0:0,0:0:1,32768:0:1,32768:1024:1 BENCH_MODES=bf16 timeout 200 python3 -m bench.kernel_check \
  --sections prefetch --out $OUT/r/prefetch-bf16 > $OUT/r/prefetch-bf16.log 2>&1
timeout 80 python3 -m bench.run --shape llama3.1-8b --phases floor --out $OUT/r/floor > $OUT/r/floor.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
