#!/bin/bash
# Issue 22's engine targets on the Llama-3.1-8B shape, one call (about 9 minutes): the floor phase (bf16, fp8,
# int8_wo and int4_sym g128 weight reads, our one-row kernels over the same weights), then our engine with bf16
# and int4 g128 weights at 128/128 (1, 8, 64, 256 streams) and 2048/128 (1, 8 streams); results.md's targets
# table has the int4 rows (batch 1 beside the 4-bit read, 2048/128 at batch 1 beside 2 x 231.8, batch 8 and 256
# streams beside bf16); then issue 18's one-row GEMV sweep on Llama-3.1-8B's matrices. Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 330 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine,engine_int4 \
  --phase-timeout 150 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
# Issue 18's batch-1 ratios (BF16 1.103x, FP8 1.347x the read): the one-row GEMV's launch shapes were swept on
# Llama-2-7B's matrices; the same sweep on Llama-3.1-8B's (qkv 6,144, gate_up 28,672, down K 14,336).
MM_SHAPE=llama3.1-8b timeout 240 python3 -m bench.kernel_check --sections gemv1 \
  --out $OUT/r/gemv1-llama3 > $OUT/r/gemv1-llama3.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
