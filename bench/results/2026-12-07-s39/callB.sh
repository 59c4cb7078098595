#!/bin/bash
# Session 39 (~5 min, any Hopper GPU; no carry): the lm_head in int8 (quantization.lm_head) at batch 1: the engine at
# one stream, 128/128 and 2048/128, int4 g128 with a 16-bit and with an int8 lm_head, then fp8 with each, one report
# with the weight-read floor (which counts a 16-bit lm_head).
source bench/results/2026-12-05-next-calls/preamble.sh
timeout 420 python3 -m bench.run --shape llama3.1-8b --plan int4 \
  --phases floor,engine_int4,engine_int4_head8,engine_fp8,engine_fp8_head8 --workloads 128x128,2048x128 \
  --concurrency 1 --phase-timeout 100 --out $OUT/r/rec > $OUT/r/rec.log 2>&1
grep -E "^\| |rc=" $OUT/r/rec.log | tail -14
save; rm -rf $OUT/r
