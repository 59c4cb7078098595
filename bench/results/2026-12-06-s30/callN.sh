#!/bin/bash
# Session 30, call N (~4.5 min, the session's last device time; carry .carry/tokenizer; `tree.sh _b c5ab500` first):
# the decode kernel of a prefill graph's split walking the rows counted on the device (a fixed grid of 256 rows' programs,
# after call M found ~8 ns a program an idle row slot): its GPU tests and the prefill graphs' against eager steps,
# kernel_check mixed_graph, then 128/128 at 1,024 streams with output lengths spread +-50% (3 waves), this tree against
# c5ab500 (_b/), while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$PWD timeout 80 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels_model.py \
  -k "counted or persistent or split or prefill_graphs or decode_attention" > $OUT/r/tests.log 2>&1
save
PYTHONPATH=$PWD timeout 45 python3 -m bench.kernel_check --sections mixed_graph --out $OUT/r/kc > $OUT/r/kc.log 2>&1
save
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 90"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-200} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 95 python3 -m bench.run $B $3 --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save
}
W128="--workloads 128x128 --concurrency 1024 --waves 3 --spread 0.5"
ab . new128 "$W128"; ab _b base128 "$W128"
save; rm -rf $OUT/r
