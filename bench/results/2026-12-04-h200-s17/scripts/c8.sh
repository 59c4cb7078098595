#!/bin/bash
# Session 17 call 8: final decode_config (one warp, 3 stages, partitions toward 1,024 programs): GPU tests; A/B vs HEAD.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
timeout 100 python3 -m pytest -q tests/test_kernels.py -k "decode" 2>&1 | tail -3 > $OUT/r/tests.txt
DECODE_ONLY=1 PYTHONPATH=$PWD timeout 60 python3 _gpu/attn_ab.py $OUT/r/ab-new.json > $OUT/r/ab-new.log 2>&1
(cd _prev && DECODE_ONLY=1 PYTHONPATH=$PWD timeout 60 python3 ../_gpu/attn_ab.py $OUT/r/ab-prev.json > $OUT/r/ab-prev.log 2>&1)
ATTN_HEADS=32,32 ATTN_WARPS=1 ATTN_BLOCKS=32 ATTN_STAGES=3 ATTN_CASES=1:2048:bf16,8:1100:bf16,8:170:bf16,64:170:bf16 \
  PYTHONPATH=$PWD timeout 80 python3 -m bench.kernel_check --sections attn --out $OUT/r/mha > $OUT/r/mha.log 2>&1
(cd _prev && ATTN_HEADS=32,32 ATTN_WARPS=4 ATTN_BLOCKS=32 ATTN_STAGES=2 ATTN_CASES=1:2048:bf16,8:1100:bf16,8:170:bf16,64:170:bf16 \
  PYTHONPATH=$PWD timeout 80 python3 -m bench.kernel_check --sections attn --out $OUT/r/mha-prev > $OUT/r/mha-prev.log 2>&1)
cd $OUT && tar czf r.tgz r && rm -rf r
