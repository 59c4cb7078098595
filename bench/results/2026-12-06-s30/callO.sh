#!/bin/bash
# Prepared in session 30 (~9.5 min; carry .carry/tokenizer; `tree.sh _b c5ab500` first): the A/B that call N ran out
# of device time for. The prefill graphs' split (341d5e9: decode rows through the decode kernel walking rows counted on
# the device, fresh prompts over their own K/V) against c5ab500 (_b/), output lengths spread +-50% (`--spread 0.5`, so
# requests finish and are replaced at different steps and small mixed steps are common): 128/128 at 1,024 streams (3
# waves), 1000/1000 at 256 (2 waves), 2048/128 at 256 (4 waves), alternating trees, while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 100"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-470} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B $3 --spread 0.5 --out $OUT/r/ab-$2 \
    > $OUT/r/ab-$2.log 2>&1); save
}
W128="--workloads 128x128 --concurrency 1024 --waves 3"
ab . new128 "$W128"; ab _b base128 "$W128"
W1000="--workloads 1000x1000 --concurrency 256 --waves 2"
ab _b base1000 "$W1000"; ab . new1000 "$W1000"
W2048="--workloads 2048x128 --concurrency 256 --waves 4"
ab . new2048 "$W2048"; ab _b base2048 "$W2048"
save; rm -rf $OUT/r
