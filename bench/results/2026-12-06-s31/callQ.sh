#!/bin/bash
# Session 31, call Q (~9 min; carry .carry/tokenizer; `_c/` as for call P: 4d8f15d's llmserve and bench). Issue 22:
# the paired int4 GEMV's asymmetric weights through code - 8 (their minimum takes 8 scales back), then as call P:
# GPU tests, `kernel_check --sections int4` here and in _c/, the one-row sweep as the model now runs it (gate_up with
# the gate in its epilogue, down_proj plain); then where a batch-1 int4 step goes (`--sections profile`, Llama-3.1-8B
# int4_sym at 1 stream) and the engine at one stream (128/128, 2048/128) beside the int4 read floor.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "pair or word or match or gate_out or int4" > $OUT/r/tests.log 2>&1
save
kc() { (cd $1 && PYTHONPATH=$PWD timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
kc . new1; kc _c base1
INT4_GEMV_KINDS=pairs INT4_SWEEP_ROWS=1 PYTHONPATH=$PWD timeout 120 python3 -m bench.kernel_check \
  --sections int4_sweep --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
save
PROFILE_SHAPE=llama3.1-8b PROFILE_CASES=int4_sym:1 PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check \
  --sections profile --out $OUT/r/profile > $OUT/r/profile.log 2>&1
save
PYTHONPATH=$PWD timeout 170 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine_int4 \
  --concurrency 1 --phase-timeout 150 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save; rm -rf $OUT/r
