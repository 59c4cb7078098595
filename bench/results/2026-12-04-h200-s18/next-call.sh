#!/bin/bash
# For the next session's first device call (about 9 minutes): the run of record with this session's fp8 GEMM path
# (fast accumulation, fp8_mm at 33-256 rows), every TensorRT-LLM workload with a published Llama-3.1-8B figure
# plus Mistral's 128/128, fp8 weights and KV cache, two waves. Carry .carry (python -m bench.carry).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
A="--plan trtllm --serving max_batch_size=1024 --waves 2 --phases engine_fp8_kv8_t8192 --out $OUT/r/rec --resume"
run() { timeout $1 python3 -m bench.run --shape $2 $A --phase-timeout $(($1 - 10)) --workloads $3 --concurrency $4 \
  >> $OUT/r/rec.log 2>&1; }
run 80 llama3.1-8b 128x128 1024
run 70 llama3.1-8b 2048x128 256
run 80 llama3.1-8b 1000x1000 256
run 110 llama3.1-8b 128x2048 256
run 150 llama3.1-8b 2048x2048 256
cd $OUT && tar czf r.tgz r && rm -rf r
