#!/bin/bash
# Session 36 (~3 min, any Hopper GPU): the shortest useful call: int4_mma's GPU tests, then the kernel at two launch
# shapes (register buffers; the cp.async ring) beside the paired GEMV at one row. SWITCHES=1 (session 37, ~5 min):
# then the engine's decode step at one stream with MMA_ROWS 1 against 0 (kernel_check switches) if under 200 s so far.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s36
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
timeout 100 python3 -m pytest -q -rf -x tests/test_kernels_int4_mma.py > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
PROBE_ROWS=1 PROBE_VARIANTS="1,8,1,2,0;1,4,1,0,3" timeout 90 python3 $D/probe.py time > $OUT/r/time.log 2>&1
grep -E "^time|^total|FAIL|Error" $OUT/r/time.log | cut -c1-300; save
if [ "${SWITCHES:-0}" = 1 ] && [ $((SECONDS - start)) -lt 200 ]; then
  SWITCH_MODE=int4_sym SWITCH_BATCHES=1 SWITCH_CASES="int4:MMA_ROWS=1;int4:MMA_ROWS=0" \
    timeout 110 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw > $OUT/r/sw.log 2>&1
  grep "^switches" $OUT/r/sw.log; tail -3 $OUT/r/sw.log; save
fi
rm -rf $OUT/r
