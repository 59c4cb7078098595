#!/bin/bash
# For the next session's first device call (about 9 minutes). 1) A mixed step's decode rows through the decode kernel
# (72f6fa5) end to end: 2048/128 at 256 streams, 8 waves, 8775101's llmserve (_prev/) first (it pays the Triton
# compile; s21 call 2's new run timed out doing so), then this tree (since the twenty-second session also with fresh
# prompts' attention over their own K/V: s22-fresh.sh times that apart), then _prev again. 2) int4 with DEQUANT_ROWS
# 192 (b87bc02): the engine at 8 and 256 streams of 128/128, bf16 beside it. Before the call: `bash
# bench/results/2026-12-05-next-calls/tree.sh _prev 8775101` (delete _prev/ after); carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 8"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/split-$2 > $OUT/r/split-$2.log 2>&1); }
ab _prev prev1
ab . new
ab _prev prev2
PYTHONPATH=$PWD timeout 150 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases engine,engine_int4 \
  --workloads 128x128 --concurrency 8,256 --phase-timeout 70 --out $OUT/r/int4-192 > $OUT/r/int4-192.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
