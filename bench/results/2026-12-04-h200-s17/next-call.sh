#!/bin/bash
# Prepared for the next session's first device call (about 8 minutes): the two prepared kernels against the tree's,
# the fp8 cache's V conversion modes with the new decode kernel, and 1000/1000 at 512 streams with an fp8 KV cache.
# Before it: apply varlen-per-block.patch to a scratch copy and put its llmserve/kernels/attention.py at
# _exp/attention.py; build .carry (python -m bench.carry) and carry it.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
R=bench/results/2026-12-04-h200-s17
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 70 python3 $R/scripts/varlen_ab.py $OUT/r/varlen.json > $OUT/r/varlen.log 2>&1
timeout 150 python3 $R/int4-words/w4_ab.py $OUT/r/w4.json > $OUT/r/w4.log 2>&1
ATTN_HEADS=32,8 ATTN_WARPS=1 ATTN_BLOCKS=32 ATTN_STAGES=3 ATTN_FP8_MODES=1,2 \
  ATTN_CASES=256:2100:fp8,1024:600:fp8,8:1100:fp8 \
  timeout 60 python3 -m bench.kernel_check --sections attn --out $OUT/r/modes > $OUT/r/modes.log 2>&1
timeout 250 python3 -m bench.run --shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --waves 2 \
  --phase-timeout 230 --phases engine_fp8_kv8_t8192 --workloads 1000x1000 --concurrency 512 \
  --out $OUT/r/kv8-1000-512 > $OUT/r/kv8-1000-512.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
