#!/bin/bash
# Session 35 (~7 min): the int4 GPU tests left pending (no_rows, wgmma), the Gluon kernel at BLOCK_M 256 / 8 warps /
# 3 stages against dequantize + F.linear, ncu of four launch shapes at 256 rows (gate_up), then the warp-specialized
# prototype (w4ws.py) and the uint16-read one (w4u16.py) checked and timed beside the landed kernel.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "no_rows or wgmma" \
  > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
PYTHONPATH=$PWD timeout 60 python3 bench/results/2026-12-06-s35/probe.py check > $OUT/r/check.log 2>&1
awk '{print $NF, $0}' $OUT/r/check.log | sort -g | tail -3; save
PYTHONPATH=$PWD timeout 100 ncu --clock-control none -k regex:w4wgmma --section SpeedOfLight \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section SchedulerStats --section Occupancy --section LaunchStats \
  python3 bench/results/2026-12-06-s35/probe.py ncu > $OUT/r/ncu.txt 2>&1
grep -E "^\(|Duration|Tensor|Shared Memory|Issue Slots|Eligible|Theoretical Occ|Achieved Occ" $OUT/r/ncu.txt | head -60; save
PYTHONPATH=$PWD timeout 230 python3 bench/results/2026-12-06-s35/probe.py ws > $OUT/r/ws.log 2>&1
grep -E "^total|FAIL|Error" $OUT/r/ws.log; grep -E "^(ws|u16|ws16) " $OUT/r/ws.log | awk '{print $NF, $0}' | sort -g | tail -2; save
rm -rf $OUT/r
