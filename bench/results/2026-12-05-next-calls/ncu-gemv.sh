#!/bin/bash
# Issue 22 (and 18): Nsight Compute on the batch-1 GEMVs of Llama-3.1-8B's matrices, bf16 / fp8 / int4 g128 (the int4
# down_proj through both kernels), ncu_gemv.py beside this script: three calls each after a warm-up pass, the warm-ups
# skipped (25 launches), and the 8-row tensor-core kernels (bf16, int4) beside them. Why the int4 GEMV reads at
# 0.9-1.6 TB/s (issue-bound: "not selected", "math pipe throttle" stalls, issue slots busy; or latency-bound: "long
# scoreboard", few warps), and the fp8 GEMV beside bf16. About 4 minutes; short enough to fill what a session's device
# time leaves after three full calls. ncu reads the counters on this Firecracker machine with --clock-control none
# (H200.md). Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "$NCU" > $OUT/r/ncu-version.txt && $NCU --version >> $OUT/r/ncu-version.txt 2>&1
S="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats"
S="$S --section Occupancy --section LaunchStats --section InstructionStats --section SourceCounters"
timeout 420 $NCU --clock-control none --kernel-name regex:"gemv|mm_kernel|w4mma" --launch-skip 25 $S --import-source no \
  -o $OUT/r/gemv -f python3 bench/results/2026-12-05-next-calls/ncu_gemv.py > $OUT/r/ncu.log 2>&1
$NCU --import $OUT/r/gemv.ncu-rep --page details --csv > $OUT/r/gemv-details.csv 2>> $OUT/r/ncu.log
cd $OUT && tar czf r.tgz r && rm -rf r
