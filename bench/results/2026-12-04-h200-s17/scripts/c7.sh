#!/bin/bash
# Session 17 call 7: the per-block decode kernel's launch shapes for fewer than 256 programs (partitions, warps, stages).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
export ATTN_HEADS=32,8 ATTN_WARPS=1,2,4 ATTN_BLOCKS=32 ATTN_STAGES=2,3 ATTN_PARTS=8,16,32 ATTN_FP8_MODES=1
ATTN_CASES=1:2048:bf16,1:2048:fp8,8:1100:bf16,8:1100:fp8,16:1100:fp8,8:200:fp8 \
  timeout 330 python3 -m bench.kernel_check --sections attn --out $OUT/r/small > $OUT/r/small.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
