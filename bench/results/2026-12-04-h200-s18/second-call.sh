#!/bin/bash
# A second call for the next session (about 8 minutes): the bf16 GEMM sweep at 17-512 rows (does the fp8 finding
# hold for 16-bit weights?), 1000/1000 at 512 streams with an fp8 KV cache, whose full garbage collections
# (results.json gc_trace; 15 of 28-62 ms in call 1) freeze_heap's new threshold should remove, and the guide's
# 600+ requests/s (`--plan guide`: 128/32, added 2026-12-05, never run on Llama-3.1-8B FP8). Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
timeout 150 python3 bench/results/2026-12-04-h200-s18/scripts/bf16mm.py $OUT/r/bf16mm.json > $OUT/r/bf16mm.log 2>&1
timeout 200 python3 -m bench.run --shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --waves 2 \
  --phase-timeout 190 --phases engine_fp8_kv8_t8192 --workloads 1000x1000 --concurrency 512 \
  --out $OUT/r/kv8-1000-512 > $OUT/r/kv8-1000-512.log 2>&1
timeout 150 python3 -m bench.run --shape llama3.1-8b --plan guide --serving max_batch_size=1024 \
  --phase-timeout 140 --phases engine_fp8_kv8_t8192 --concurrency 512,1024,2048 \
  --out $OUT/r/guide > $OUT/r/guide.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
