#!/bin/bash
# Session 39 (~6 min, any Hopper GPU): the one-row paired int4 GEMV split across K (group_tiles.SPLIT_PROGRAMS):
# its GPU tests, all linears at one row against no split (probe.py), then the engine's one-stream int4 decode step
# with SPLIT_PROGRAMS 0 / 768 / 1024 / 0 (kernel_check switches; graphs captured again for each case).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
D=bench/results/2026-12-07-s39
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 150 python3 -m pytest -q -rf -x tests/test_kernels_int4_split.py tests/test_kernels_int4.py -k "split or pair" \
  > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
timeout 120 python3 $D/probe.py > $OUT/r/probe.log 2>&1; cut -c1-400 $OUT/r/probe.log | tail -6; save
SWITCH_MODE=int4_sym SWITCH_BATCHES=1 SWITCH_CASES="group_tiles:SPLIT_PROGRAMS=0;group_tiles:SPLIT_PROGRAMS=768;group_tiles:SPLIT_PROGRAMS=1024;group_tiles:SPLIT_PROGRAMS=0" \
  timeout 200 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw > $OUT/r/sw.log 2>&1
grep "^switches" $OUT/r/sw.log; tail -3 $OUT/r/sw.log; save
rm -rf $OUT/r
