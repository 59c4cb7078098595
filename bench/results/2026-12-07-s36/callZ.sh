#!/bin/bash
# Session 37 (~3 min, any Hopper GPU; what 260 s of device time holds, a start included): int4_mma's GPU tests (stop at the first
# failure), then the kernel at two launch shapes beside the paired GEMV at one row.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s36
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 80 python3 -m pytest -q -rf -x tests/test_kernels_int4_mma.py > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
PROBE_ROWS=1 PROBE_VARIANTS="1,8,1,2,0;1,4,1,0,0" timeout 70 python3 $D/probe.py time > $OUT/r/time.log 2>&1
grep -E "^time|^total|FAIL|Error" $OUT/r/time.log | cut -c1-300; save
rm -rf $OUT/r
