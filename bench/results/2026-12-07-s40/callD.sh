#!/bin/bash
# Session 40 (~9.5 min, any Hopper GPU; no carry): callC's and callB's questions in one lease, the runs that answer
# a knob first: the decode attention merged in the decode kernel (attention.MERGE_IN_DECODE): its GPU tests, the
# engine's decode step at 1 and 8 streams off / on / off, int4 then fp8; then batch 1 with the lm_head in int8
# (int4 g128, then fp8 if the clock allows) beside the 16-bit head and the weight-read floor.
source bench/results/2026-12-05-next-calls/preamble.sh
timeout 100 python3 -m pytest -q -rf -x tests/test_kernels_attention.py -k "decode" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
msw() {  # MODE
  SWITCH_MODE=$1 SWITCH_BATCHES=1,8 SWITCH_CASES="attention:MERGE_IN_DECODE=0;attention:MERGE_IN_DECODE=1;attention:MERGE_IN_DECODE=0" \
    timeout 130 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-$1 > $OUT/r/sw-$1.log 2>&1
  grep "^switches" $OUT/r/sw-$1.log; tail -2 $OUT/r/sw-$1.log; save
}
msw int4_sym
phases=floor,engine_int4,engine_int4_head8
[ $((SECONDS - start)) -lt 200 ] && phases=$phases,engine_fp8,engine_fp8_head8
left=$((560 - (SECONDS - start)))
timeout $left python3 -m bench.run --shape llama3.1-8b --plan int4 --phases $phases --workloads 128x128,2048x128 \
  --concurrency 1 --phase-timeout 90 --out $OUT/r/rec > $OUT/r/rec.log 2>&1
grep -E "^\| |rc=" $OUT/r/rec.log | tail -14
save; rm -rf $OUT/r
