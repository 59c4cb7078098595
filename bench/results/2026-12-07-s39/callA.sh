#!/bin/bash
# Session 39 (~8 min, any Hopper GPU; no carry): the one-row GEMVs split across K (group_tiles.SPLIT_PROGRAMS for
# int4's, gemv.SPLIT_PROGRAMS for the 16/8-bit one): their GPU tests, all linears at one row against no split
# (probe.py: int4, bf16, fp8), then the engine's one-stream decode step with each knob at 0 / 768 / 1024 / 0
# (kernel_check switches, graphs captured again for each case): int4, then fp8 and bf16 if under 330 s so far.
source bench/results/2026-12-05-next-calls/preamble.sh
D=bench/results/2026-12-07-s39
timeout 150 python3 -m pytest -q -rf -x tests/test_kernels_split_k.py tests/test_kernels_int4.py -k "split or pair" \
  > $OUT/r/tests.log 2>&1; tail -4 $OUT/r/tests.log; save
timeout 150 python3 $D/probe.py > $OUT/r/probe.log 2>&1; grep total $OUT/r/probe.log; tail -2 $OUT/r/probe.log | cut -c1-300; save
sw() {  # MODULE MODE
  SWITCH_MODE=$2 SWITCH_BATCHES=1 SWITCH_CASES="$1:SPLIT_PROGRAMS=0;$1:SPLIT_PROGRAMS=768;$1:SPLIT_PROGRAMS=1024;$1:SPLIT_PROGRAMS=0" \
    timeout 110 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-$2 > $OUT/r/sw-$2.log 2>&1
  grep "^switches" $OUT/r/sw-$2.log; tail -2 $OUT/r/sw-$2.log; save
}
sw group_tiles int4_sym
[ $((SECONDS - start)) -lt 330 ] && sw gemv fp8
[ $((SECONDS - start)) -lt 450 ] && sw gemv bf16
rm -rf $OUT/r
