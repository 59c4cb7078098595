#!/bin/bash
# Prepared in session 31 (~6 min on an H200; carry .carry/tokenizer): issue 22's engine targets with today's one-row
# int4 GEMV (gate and rotary folded in, launched without PDL), bf16 beside it: batch 1 (128/128, 2048/128) against the
# read floors, 8 streams (target 1.3x bf16), 64 and 256 (target: at least bf16). Then, if time is left, the PDL A/B
# of call R on the H200 (`--sections pdl`, int4_sym at batch 1 and 8).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 420 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine,engine_int4 \
  --phase-timeout 180 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save
BENCH_PDL_SHAPE=llama3.1-8b BENCH_PDL_WEIGHTS=int4_sym BENCH_PDL_SIZES=1,8 \
  BENCH_PDL_MASKS=none,linear+fused+int4+int4_pairs,linear+fused+int4 \
  timeout 120 python3 -m bench.kernel_check --sections pdl --out $OUT/r/pdl > $OUT/r/pdl.log 2>&1
save; rm -rf $OUT/r
