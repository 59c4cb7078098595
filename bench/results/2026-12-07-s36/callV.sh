#!/bin/bash
# Session 36 (~8 min, any Hopper GPU; carry nothing): the int4 tensor-core kernel for 1-8 rows (int4_mma.py): its
# tests and the fold tests; checked against dequantize + F.linear and timed at each launch shape beside the paired GEMV
# (1 row) and the wgmma kernel (8 rows), all Llama-3.1-8B linears; the engine's decode steps at 1 and 8 streams with
# MMA_ROWS 1, 0 (the paired GEMV), 8 (kernel_check switches: graphs captured per case).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s36
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
timeout 120 python3 -m pytest -q -rf tests/test_kernels_int4_mma.py tests/test_kernels_int4.py \
  -k "mma or one_row" > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
timeout 140 python3 $D/probe.py time > $OUT/r/time.log 2>&1; grep -E "^total|FAIL|Error" $OUT/r/time.log | cut -c1-500; save
timeout 60 python3 $D/probe.py check > $OUT/r/check.log 2>&1; grep -E "worst|FAIL|Error" $OUT/r/check.log | head -5; save
[ $((SECONDS - start)) -lt ${SWITCH_UNTIL:-300} ] && SWITCH_MODE=int4_sym SWITCH_BATCHES=1,8 SWITCH_CASES="int4:MMA_ROWS=1;int4:MMA_ROWS=0;int4:MMA_ROWS=8" \
  timeout 150 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw > $OUT/r/sw.log 2>&1
grep "^switches" $OUT/r/sw.log; save
rm -rf $OUT/r
