#!/bin/bash
# Issue 18's long-answer workloads at 512 streams (about 8 minutes): at 256 streams a decode step of 128/2048 reads
# the fp8 weights (8 GB) for 256 tokens and the KV cache at bandwidth (s18 profile); 512 rows halve the weight read
# a token, and 512 x 2,176 tokens of fp8 KV (73 GB) fit beside the weights. 128/2048 at 512 (2 waves) and 2048/2048
# at 512 (1 wave: device time). First, a minute: which torch calls could serve fresh prompts' attention at cuDNN's
# speed (bench/results/2026-12-05-h200-s21/scripts/prefill_attn_ab2.py), and what cuDNN's first call at an unseen
# prompt length costs (a plan built per shape would make every new length pay it). Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
timeout 120 python3 bench/results/2026-12-05-h200-s21/scripts/prefill_attn_ab2.py $OUT/r/prefill_attn2.json \
  > $OUT/r/prefill_attn2.log 2>&1
A="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --out $OUT/r/rec --resume"
run() { timeout $1 python3 -m bench.run $A --phase-timeout $(($1 - 10)) --waves $2 --workloads $3 --concurrency $4 \
  >> $OUT/r/rec.log 2>&1; }
run 200 2 128x2048 512
run 200 1 2048x2048 512
cd $OUT && tar czf r.tgz r && rm -rf r
