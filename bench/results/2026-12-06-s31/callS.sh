#!/bin/bash
# Session 31, call S (~5 min; carry .carry/tokenizer). Issue 22 with the paired int4 GEMV launched plainly
# (int4.PAIRS_PDL = False, after call R): its GPU tests, the engine at one stream (128/128 and 2048/128, the batch-1
# targets) beside the int4 read floor, `kernel_check --sections int4`, and the one-row sweep on asymmetric weights.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 80 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair or gate_out" > $OUT/r/tests.log 2>&1
save
timeout 170 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine_int4 --concurrency 1 \
  --phase-timeout 150 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save
timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc > $OUT/r/kc.log 2>&1
save
INT4_SWEEP_ASYM=1 INT4_GEMV_KINDS=pairs INT4_SWEEP_ROWS=1 timeout 100 python3 -m bench.kernel_check \
  --sections int4_sweep --out $OUT/r/sweep-asym > $OUT/r/sweep-asym.log 2>&1
save; rm -rf $OUT/r
