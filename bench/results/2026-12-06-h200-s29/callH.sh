#!/bin/bash
# Session 29, call H (about 4.5 minutes; carry .carry/tokenizer): this tree on the H200, the runs of record for the
# workloads the eager-attention change moves: 2048/128 at 256 streams twice (the first compiles), then 128/128 at
# 1,024 streams, while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 100"
run() {
  [ $((SECONDS - start)) -lt ${RUN_UNTIL:-190} ] || return
  PYTHONPATH=$PWD timeout 100 python3 -m bench.run $B $2 --out $OUT/r/$1 > $OUT/r/$1.log 2>&1; save
}
W2048="--workloads 2048x128 --concurrency 256 --waves 4"
run h2048a "$W2048"; run h2048b "$W2048"
run h128 "--workloads 128x128 --concurrency 1024 --waves 4"
save; rm -rf $OUT/r
