#!/bin/bash
# The int4 tensor-core kernel with contiguous x loads against the commit before it, one call (~4 minutes). Before
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
cd $OUT && tar czf r.tgz r && rm -rf r
