#!/bin/bash
# Session 26, call 3 (as run, about 1 minute on the warm H100 of call 2; _t2 = 8ba3916 beside this tree, no carry):
# kernel_check's profile of the engine's first prefill step of 4 x 2,048-token prompts (8,192 tokens a step, fp8
# weights and KV cache, Llama-3.1-8B shape) and a decode step 40 tokens later, in both trees.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PROFILE_SHAPE=llama3.1-8b PROFILE_PROMPT=2048 PROFILE_CASES=fp8+kv8:4
export PROFILE_SERVING=max_num_tokens=8192
mkdir -p $OUT/r
for t in _t2 .; do
  n=$(basename $(cd $t && pwd))
  (cd $t && PYTHONPATH=$PWD timeout 165 python3 -m bench.kernel_check --sections profile --out $OUT/r/prof-$n \
    > $OUT/r/prof-$n.log 2>&1)
done
cd $OUT && tar czf r.tgz r && rm -rf r
