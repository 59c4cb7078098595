#!/bin/bash
# Session 29, call E (about 9 minutes; carry .carry/tokenizer; `tree.sh _b edc449b` first): steps past the prefill
# graphs' buckets (every 8,192-token step) with an eager step's attention (fresh prompts over their own K/V, leading
# decode rows through the decode kernel, a launch an entry) instead of the persistent launch over the cache. The GPU
# tests of the paths touched, layer 0's varlen launches in the engine's first 4 x 2,048 step (varlen_inputs.py), then
# 2048/128 at 256 streams (Llama-3.1-8B, fp8, fp8 KV cache) in _b/ and this tree, alternating.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ROOT=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$ROOT timeout 100 python3 -m pytest -q -rf tests/test_prefill_graphs.py tests/test_kernels_model.py \
  tests/test_kernels_attention.py -k "prefill_graphs or past_the or fresh or varlen" > $OUT/r/tests.log 2>&1
save
OUT=$OUT/r TREE=new PYTHONPATH=$ROOT timeout 100 python3 bench/results/2026-12-05-h200-s26/varlen_inputs.py \
  > $OUT/r/inputs-new.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 4"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 100"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
for run in "_b base" ". new" "_b base2" ". new2"; do
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-470} ] || break
  ab $run
done
save; rm -rf $OUT/r
