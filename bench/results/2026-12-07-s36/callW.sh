#!/bin/bash
# Session 36 (~4 min, any Hopper GPU): callV cut to what a short lease holds: int4_mma's GPU tests, then the kernel
# timed at four launch shapes (PROBE_VARIANTS) beside the paired GEMV (1 row) and the wgmma kernel (8 rows).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s36
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 110 python3 -m pytest -q -rf tests/test_kernels_int4_mma.py > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
PROBE_VARIANTS="1,8,1,2,0;1,16,1,0,0;1,4,1,0,3;1,8,1,0,3" timeout 150 python3 $D/probe.py time > $OUT/r/time.log 2>&1
grep -E "^total|FAIL|Error" $OUT/r/time.log | cut -c1-500; save
rm -rf $OUT/r
