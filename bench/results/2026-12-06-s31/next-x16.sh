#!/bin/bash
# Prepared in session 31 (~5 min; carry .carry/tokenizer; `bash bench/results/2026-12-05-next-calls/tree.sh _b a330f3c`
# first, `rm -rf _b` after). The paired int4 GEMV's x words indexed from aranges (16-byte copies; gate_up's loop 289 ->
# 254 SASS instructions on the CPU's compile), landed without a GPU run: its GPU tests, then `kernel_check --sections
# int4` here and in _b/ (a330f3c) twice alternating, then the engine at one stream in both trees.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "rotates or folds or gate_out or pair or int4_asym or int4_sym or match" > $OUT/r/tests.log 2>&1
save
kc() { (cd $1 && PYTHONPATH=$PWD timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
kc . new1; kc _b base1; kc _b base2; kc . new2
B="--shape llama3.1-8b --plan int4 --phases floor,engine_int4 --concurrency 1 --phase-timeout 100"
(PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --out $OUT/r/e-new > $OUT/r/e-new.log 2>&1); save
(cd _b && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --out $OUT/r/e-base > $OUT/r/e-base.log 2>&1); save
rm -rf $OUT/r
