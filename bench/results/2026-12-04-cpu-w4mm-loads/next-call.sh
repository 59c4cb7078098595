#!/bin/bash
# The int4 tensor-core kernel with contiguous x loads against the commit before it, one call (~8 minutes, with a GEMV sweep for issue 18 at the end). Before
# the call, here: `git archive b460824 llmserve bench | tar x -C _prev` in an empty _prev/ (drop _prev/bench/results),
# `ln -s ../.carry _prev/.carry`, and carry .carry (python -m bench.carry).
# b460824 is main before the kernel change (this folder's README).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
timeout 200 python3 -m pytest -q tests/test_kernels_int4.py tests/test_kernels_int8_group.py > $OUT/r/tests.log 2>&1
for tree in . _prev; do
  name=$([ "$tree" = . ] && echo new || echo prev)
  (cd $tree && PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check --sections int4,int8_group \
     --out $OUT/r/int4-$name > $OUT/r/int4-$name.log 2>&1)
done
# Issue 18's batch-1 ratios (BF16 1.103x, FP8 1.347x the read): the one-row GEMV's launch shapes were swept on
# Llama-2-7B's matrices; the same sweep on Llama-3.1-8B's (qkv 6,144, gate_up 28,672, down K 14,336).
MM_SHAPE=llama3.1-8b PYTHONPATH=$PWD timeout 240 python3 -m bench.kernel_check --sections gemv1 \
  --out $OUT/r/gemv1-llama3 > $OUT/r/gemv1-llama3.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
