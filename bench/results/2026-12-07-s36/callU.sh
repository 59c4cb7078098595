#!/bin/bash
# Session 36 (~4 min, any Hopper GPU): the tensor-core int4 GEMV prototype (w4mv.py) checked against dequantize +
# F.linear and timed beside the landed one-row GEMV and the 8-row wgmma kernel; then callT.sh's profile and tests.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s36
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 150 python3 $D/probe.py check > $OUT/r/check.log 2>&1; grep -E "worst|FAIL|Error" $OUT/r/check.log | head -5
tail -3 $OUT/r/check.log | cut -c1-300; save
timeout 200 python3 $D/probe.py time > $OUT/r/time.log 2>&1; grep -E "^total|FAIL|Error" $OUT/r/time.log | cut -c1-600; save
[ "$MORE" ] && bash $D/callT.sh
rm -rf $OUT/r
