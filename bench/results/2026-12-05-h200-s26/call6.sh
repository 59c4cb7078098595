#!/bin/bash
# Issue 22, prepared in the twenty-sixth session (about 6 minutes; no carry): the paired-bf16 int4 GEMV
# (llmserve/kernels/int4_pairs.py, int4.PAIRS_GEMV off until timed). Its GPU tests (and the other int4 GEMVs'),
# `kernel_check --sections int4` (all linears of Llama-3.1-8B at M = 1 with today's GEMVs and with the paired one,
# g128 symmetric and asymmetric, beside the int4 read floor), then its launch shapes at M = 1 against the word and
# byte GEMVs (`int4_sweep`, INT4_GEMV_KINDS=bytes,words,pairs, INT4_SWEEP_ROWS=1). On the CPU,
# `python -m bench.ptx_stats w4:1x4096x4096:128:pairs w4:1x4096x4096:128:words` counts 7.2 against 9.3 SASS
# instructions a weight byte in the loop (16 rows of 1,024 inputs; 6.5 at 32 rows).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name --format=csv > $OUT/r/gpu.txt
timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair or word or match" > $OUT/r/tests.log 2>&1
save
timeout 150 python3 -m bench.kernel_check --sections int4 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save
INT4_GEMV_KINDS=bytes,words,pairs INT4_SWEEP_ROWS=1 timeout 240 python3 -m bench.kernel_check --sections int4_sweep \
  --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
save
rm -rf $OUT/r
