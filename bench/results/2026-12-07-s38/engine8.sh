#!/bin/bash
# Session 38 (~1 min, any Hopper GPU; no carry), as it ran with int4.MMA_ROWS = 8 and int4_mma.mma_config per matrix:
# the engine's decode steps at 1 and 8 streams with MMA_ROWS 8 / 0 / 8 (kernel_check switches), then the engine at 8
# streams, 128/128, int4 g128 against bf16 in one report (issue 22's batch-8 target).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
SWITCH_MODE=int4_sym SWITCH_BATCHES=1,8 SWITCH_CASES="int4:MMA_ROWS=8;int4:MMA_ROWS=0;int4:MMA_ROWS=8" \
  timeout 120 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw > $OUT/r/sw.log 2>&1
grep "^switches" $OUT/r/sw.log | sort -u
timeout 300 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases engine_int4,engine --workloads 128x128 \
  --concurrency 8 --phase-timeout 140 --out $OUT/r/rec > $OUT/r/rec.log 2>&1
grep -E "^\| (engine|int4)|rc=" $OUT/r/rec.log | tail -6
