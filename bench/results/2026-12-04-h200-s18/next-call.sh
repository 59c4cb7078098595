#!/bin/bash
# For the next session's first device call (about 9 minutes): a mixed step's attention split in two launches
# against today's one (scripts/mixed_split_ab.py), then the run of record with this session's fp8 GEMM path
# (fast accumulation, fp8_mm at 33-256 rows), every TensorRT-LLM workload with a published Llama-3.1-8B figure,
# fp8 weights and KV cache. 128/128 and 2048/128 at the plan's 8 waves (trtllm-bench queues thousands of requests,
# so its streams drift apart; this session's 2-wave runs kept each wave's prefill and decode apart), the long ones
# at 2 waves (device time). Carry .carry (python -m bench.carry).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 60 python3 bench/results/2026-12-04-h200-s18/scripts/mixed_split_ab.py $OUT/r/mixed_split.json \
  > $OUT/r/mixed_split.log 2>&1
A="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --out $OUT/r/rec --resume"
run() { timeout $1 python3 -m bench.run $A --phase-timeout $(($1 - 10)) --waves $2 --workloads $3 --concurrency $4 \
  >> $OUT/r/rec.log 2>&1; }
run 90 8 128x128 1024
run 130 8 2048x128 256
run 80 2 1000x1000 256
run 100 2 128x2048 256
run 120 2 2048x2048 256
cd $OUT && tar czf r.tgz r && rm -rf r
