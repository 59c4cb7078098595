#!/bin/bash
# Session 17 call 9: decode launch shapes at 256-1,023 programs (partitions 1/2/4, warps 1/2/4), MHA and GQA heads.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
export ATTN_WARPS=1,2,4 ATTN_BLOCKS=32 ATTN_STAGES=3 ATTN_PARTS=2,4 ATTN_FP8_MODES=1
ATTN_HEADS=32,32 ATTN_CASES=8:1100:bf16,16:1100:bf16 timeout 75 python3 -m bench.kernel_check --sections attn --out $OUT/r/mha > $OUT/r/mha.log 2>&1
ATTN_HEADS=32,8 ATTN_CASES=64:2100:bf16,64:2100:fp8 timeout 75 python3 -m bench.kernel_check --sections attn --out $OUT/r/gqa > $OUT/r/gqa.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
