#!/bin/bash
# Session 40 (~5.5 min, any Hopper GPU; no carry): callA.sh cut to what a short lease holds: the split GEMVs' GPU
# tests, probe.py for int4 and fp8 at 0 / 512 / 1,024 programs, the engine's one-stream decode step with
# group_tiles:SPLIT_PROGRAMS 0 / 768 / 0 (int4), then gemv:SPLIT_PROGRAMS for fp8 if the clock allows.
source bench/results/2026-12-05-next-calls/preamble.sh
D=bench/results/2026-12-07-s39
timeout 100 python3 -m pytest -q -rf -x tests/test_kernels_split_k.py > $OUT/r/tests.log 2>&1; tail -3 $OUT/r/tests.log; save
timeout 110 python3 $D/probe.py int4 fp8 --programs 512,1024 > $OUT/r/probe.log 2>&1; grep total $OUT/r/probe.log
tail -2 $OUT/r/probe.log | cut -c1-300; save
sw() {  # MODULE MODE SECONDS
  SWITCH_MODE=$2 SWITCH_BATCHES=1 SWITCH_CASES="$1:SPLIT_PROGRAMS=0;$1:SPLIT_PROGRAMS=768;$1:SPLIT_PROGRAMS=0" \
    timeout $3 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-$2 > $OUT/r/sw-$2.log 2>&1
  grep "^switches" $OUT/r/sw-$2.log; tail -2 $OUT/r/sw-$2.log; save
}
sw group_tiles int4_sym 100
left=$((${CALL_SECONDS:-330} - (SECONDS - start)))
[ $left -gt 70 ] && sw gemv fp8 $left
rm -rf $OUT/r
