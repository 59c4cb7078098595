#!/bin/bash
# Session 30, call K (~8 min; carry .carry/tokenizer): issue 22's paired int4 GEMV launch shapes at one row against
# the word and byte GEMVs (session 26 call6's sweep, which did not fit), then session 25's call3 (the one-row
# bf16/fp8 GEMV tiles on Llama-3.1-8B's matrices as the model launches them, and the read floor).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
INT4_GEMV_KINDS=bytes,words,pairs INT4_SWEEP_ROWS=1 timeout 240 python3 -m bench.kernel_check --sections int4_sweep \
  --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
save
MM_SHAPE=llama3.1-8b GEMV1_KINDS=bf16,fp8 timeout 200 python3 -m bench.kernel_check --sections gemv1 \
  --out $OUT/r/gemv1 > $OUT/r/gemv1.log 2>&1
save
timeout 100 python3 -m bench.run --shape llama3.1-8b --phases floor --out $OUT/r/floor > $OUT/r/floor.log 2>&1
save; rm -rf $OUT/r
