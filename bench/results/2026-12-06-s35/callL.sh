#!/bin/bash
# Session 35 (~6 min, ~8 with FULL=1; `bash bench/results/2026-12-05-next-calls/tree.sh _base 335bb50` first): the
# int4 Gluon kernel with W's bytes read as 16-bit words, the warp-specialized prototype (w4ws.py) and the kernel as at
# 335bb50 checked against dequantize + F.linear; the int4 GPU tests (the new kernel; no_rows); the three timed side
# by side; with FULL=1 also the kernel at BLOCK_M 256 / 8 warps / 3 stages against dequantize + F.linear and ncu of
# four launch shapes at 256 rows (gate_up).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 90 python3 bench/results/2026-12-06-s35/probe.py ws_check > $OUT/r/ws_check.log 2>&1
grep -E "^ok|FAIL|Error" $OUT/r/ws_check.log | head; grep -E "^(old|wgmma|ws) " $OUT/r/ws_check.log | awk '{print $NF, $0}' \
  | sort -g | tail -2; save
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -rf tests/test_kernels_int4.py \
  -k "no_rows or wgmma or small_case or many_rows" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
K=""; for k in $(grep "^ok " $OUT/r/ws_check.log | cut -d' ' -f2); do  # kinds that ran every case without a failure
  grep -q "^$k .*FAIL" $OUT/r/ws_check.log || K=$K,$k; done
PROBE_KINDS=${K#,} PYTHONPATH=$PWD timeout 170 python3 bench/results/2026-12-06-s35/probe.py ws_time > $OUT/r/ws_time.log 2>&1
grep -E "^total|FAIL|Error" $OUT/r/ws_time.log; save
[ "$FULL" ] || { rm -rf $OUT/r; exit; }  # the rest only when device time allows
PYTHONPATH=$PWD timeout 60 python3 bench/results/2026-12-06-s35/probe.py check > $OUT/r/check.log 2>&1
awk '{print $NF, $0}' $OUT/r/check.log | sort -g | tail -3; save
PYTHONPATH=$PWD timeout 100 ncu --clock-control none -k regex:w4wgmma --section SpeedOfLight \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section SchedulerStats --section Occupancy --section LaunchStats \
  python3 bench/results/2026-12-06-s35/probe.py ncu > $OUT/r/ncu.txt 2>&1
grep -E "^\(|Duration|Tensor|Shared Memory|Issue Slots|Eligible|Theoretical Occ|Achieved Occ" $OUT/r/ncu.txt | head -60; save
rm -rf $OUT/r
