#!/bin/bash
# Session 29, call G (about 4 minutes; carry .carry/tokenizer; `tree.sh _b edc449b` first): 128/128 at 1,024 streams
# (3 waves), this tree once to compile, then _b/ and this tree alternating: was call F's 9% loss a cold compile?
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 100"
W="--workloads 128x128 --concurrency 1024 --waves 3"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-300} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 100 python3 -m bench.run $B $W --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save
}
ab . cold; ab _b base; ab . new; ab _b base2; ab . new2
save; rm -rf $OUT/r
