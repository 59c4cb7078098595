#!/bin/bash
# Session 39 (~5 min, any Hopper GPU; no carry): the decode attention's partitions merged by the decode kernel's last
# program (attention.MERGE_IN_DECODE) instead of a second launch: its GPU tests, then the engine's decode step at 1
# and 8 streams with it off / on / off (kernel_check switches), fp8 then int4.
source bench/results/2026-12-05-next-calls/preamble.sh
timeout 120 python3 -m pytest -q -rf -x tests/test_kernels_attention.py -k "decode" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
for mode in fp8 int4_sym; do
  SWITCH_MODE=$mode SWITCH_BATCHES=1,8 SWITCH_CASES="attention:MERGE_IN_DECODE=0;attention:MERGE_IN_DECODE=1;attention:MERGE_IN_DECODE=0" \
    timeout 130 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-$mode > $OUT/r/sw-$mode.log 2>&1
  grep "^switches" $OUT/r/sw-$mode.log; tail -2 $OUT/r/sw-$mode.log; save
done
rm -rf $OUT/r
