#!/bin/bash
# Session 29, call F (about 8 minutes; carry .carry/tokenizer; `tree.sh _b edc449b` first): call E's A/B again
# (2048/128 at 256 streams, this tree first, warm), then 128/128 at 1,024 streams (2 waves) and 1000/1000 at 256
# (1 wave) in _b/ and this tree, while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 100"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-440} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B $3 --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save
}
W2048="--workloads 2048x128 --concurrency 256 --waves 4"
ab . new3 "$W2048"; ab _b base3 "$W2048"
W128="--workloads 128x128 --concurrency 1024 --waves 2"
ab _b base128 "$W128"; ab . new128 "$W128"
W1000="--workloads 1000x1000 --concurrency 256 --waves 1"
ab _b base1000 "$W1000"; ab . new1000 "$W1000"
save; rm -rf $OUT/r
