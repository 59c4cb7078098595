#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
PROFILE_SHAPE=llama3.1-8b PROFILE_PROMPT=1500 PROFILE_CASES=fp8+kv8:256 PROFILE_SERVING=max_num_tokens=8192,max_batch_size=1024 \
  timeout 150 python3 -m bench.kernel_check --sections profile --out $OUT/r/prof > $OUT/r/prof.log 2>&1
A="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --waves 2 --out $OUT/r/rec --resume"
timeout 120 python3 -m bench.run $A --phase-timeout 110 --phases engine_fp8_kv8_t8192 --workloads 128x128 --concurrency 1024 > $OUT/r/rec1.log 2>&1
timeout 120 python3 -m bench.run $A --phase-timeout 110 --phases engine_fp8_kv8_t8192 --workloads 2048x128 --concurrency 256 > $OUT/r/rec2.log 2>&1
timeout 170 python3 -m bench.run $A --phase-timeout 160 --phases engine_fp8_kv8_t8192 --workloads 128x2048 --concurrency 256 > $OUT/r/rec3.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
