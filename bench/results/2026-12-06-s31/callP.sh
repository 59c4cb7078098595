#!/bin/bash
# Session 31, call P (~9 min; carry .carry/tokenizer; `_c/` first: 4d8f15d's llmserve and bench, `git archive`).
# Issue 22: the paired int4 GEMV with the MLP's gate in gate_up's epilogue (GATE_OUT), unmasked tiles where N and K
# divide (EVEN) and x read 8 bytes at a time: its GPU tests, `kernel_check --sections int4` (all linears at one row:
# M1_pairs with the gate in down_proj's loads, M1_pairs_gate_out) in this tree and in _c/ side by side, twice, then
# the launch-shape sweep of the paired GEMV at one row (its instruction mix changed).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "pair or word or match or gate_out or int4" > $OUT/r/tests.log 2>&1
save
kc() { (cd $1 && PYTHONPATH=$PWD timeout 100 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
kc . new1; kc _c base1; kc _c base2; kc . new2
INT4_GEMV_KINDS=pairs INT4_SWEEP_ROWS=1 PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check \
  --sections int4_sweep --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
save; rm -rf $OUT/r
