#!/bin/bash
# Session 29, call I (about 1.5 minutes; no carry): the first two parts of bench/results/2026-12-05-h200-s26/call6.sh
# in the device time left: the int4 GEMVs' GPU tests (paired, word, byte) and all linears of Llama-3.1-8B at M = 1
# with today's GEMVs and the paired one (`kernel_check --sections int4`). Its launch-shape sweep did not run.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name --format=csv > $OUT/r/gpu.txt
timeout 60 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair or word or match" > $OUT/r/tests.log 2>&1
save
timeout 95 python3 -m bench.kernel_check --sections int4 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save; rm -rf $OUT/r
