#!/bin/bash
# The int4 tensor-core kernel with contiguous x loads against the commit before it, one call (~8 minutes, with the
# int4 paths' crossover at the end). Before
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
# Added 2026-12-05: where int4 matmuls should hand over to dequantize + cuBLAS (int4.DEQUANT_ROWS, set to 1,024
# before any timing): both paths over all linears at 64-2,048 rows, bf16 beside them (new tree only). The GEMV
# sweep on Llama-3.1-8B's matrices that was here moved to bench/results/2026-12-05-next-calls/int4-engine-call.sh.
PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check --sections int4_paths --out $OUT/r/int4-paths \
  > $OUT/r/int4-paths.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
