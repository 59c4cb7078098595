#!/bin/bash
# Session 30, call L (~9.5 min; carry .carry/tokenizer; `tree.sh _b c5ab500` first): issue 18, the split in the
# prefill graphs (the decode kernel over the bucket's decode slots, fresh prompts over their own K/V, persistent
# launches over bounds). Its GPU tests; `kernel_check --sections mixed_graph` (graph_split beside the old graph
# launch and an eager step's split); then A/B against c5ab500 (_b/): 1000/1000 at 256 streams (1 wave), 128/128 at
# 1,024 (3 waves), 2048/128 at 256 (4 waves), while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -rf -x tests/test_kernels_attention.py tests/test_prefill_graphs.py \
  -k "idle or persistent or split or fresh or prefill" > $OUT/r/tests.log 2>&1
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -rf tests/test_kernels_model.py -k "prefill_graphs" >> $OUT/r/tests.log 2>&1
save
PYTHONPATH=$PWD timeout 90 python3 -m bench.kernel_check --sections mixed_graph --out $OUT/r/mixed > $OUT/r/mixed.log 2>&1
save
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 100"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-470} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B $3 --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save
}
W1000="--workloads 1000x1000 --concurrency 256 --waves 1"
ab . new1000 "$W1000"; ab _b base1000 "$W1000"
W128="--workloads 128x128 --concurrency 1024 --waves 3"
ab _b base128 "$W128"; ab . new128 "$W128"
W2048="--workloads 2048x128 --concurrency 256 --waves 4"
ab . new2048 "$W2048"; ab _b base2048 "$W2048"
save; rm -rf $OUT/r
