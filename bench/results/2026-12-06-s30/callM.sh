#!/bin/bash
# Session 30, call M (~8 min; carry .carry/tokenizer; `tree.sh _b c5ab500` first). Issue 22: the paired int4 GEMV
# with its own launch shapes (`pairs_config`, from call K's sweep): its GPU tests and `kernel_check --sections int4`
# (all linears of Llama-3.1-8B at one row). Issue 18: mixed_graph again with the split's idle slots measured apart,
# then the graph split end to end where mixed steps come from: output lengths spread +-50% (`--spread 0.5`), so
# requests finish and are replaced at different steps: 1000/1000 at 256 streams (2 waves) and 128/128 at 1,024
# (3 waves), this tree against c5ab500 (_b/), while time is left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair or word or match" \
  > $OUT/r/tests.log 2>&1
save
PYTHONPATH=$PWD timeout 100 python3 -m bench.kernel_check --sections int4,mixed_graph --out $OUT/r/kc > $OUT/r/kc.log 2>&1
save
B="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --phase-timeout 110"
ab() {
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-400} ] || return
  (cd $1 && PYTHONPATH=$PWD timeout 120 python3 -m bench.run $B $3 --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save
}
W1000="--workloads 1000x1000 --concurrency 256 --waves 2 --spread 0.5"
ab . new1000 "$W1000"; ab _b base1000 "$W1000"
W128="--workloads 128x128 --concurrency 1024 --waves 3 --spread 0.5"
ab _b base128 "$W128"; ab . new128 "$W128"
save; rm -rf $OUT/r
