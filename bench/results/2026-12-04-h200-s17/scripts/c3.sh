#!/bin/bash
# Session 17 call 3: V [kvh, D, page] with unmasked whole tiles: GPU kernel tests; default-config A/B against HEAD; decode sweep.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
timeout 120 python3 -m pytest -q tests/test_kernels.py -k "decode or attention or varlen or rope" 2>&1 | tail -8 > $OUT/r/tests.txt
PYTHONPATH=$PWD timeout 100 python3 _gpu/attn_ab.py $OUT/r/ab-new.json > $OUT/r/ab-new.log 2>&1
(cd _prev && PYTHONPATH=$PWD timeout 100 python3 ../_gpu/attn_ab.py $OUT/r/ab-prev.json > $OUT/r/ab-prev.log 2>&1)
export ATTN_HEADS=32,8 ATTN_WARPS=1,2 ATTN_BLOCKS=32,64 ATTN_STAGES=2,3 ATTN_FP8_MODES=1,2
ATTN_CASES=256:2100:fp8,1024:600:fp8,64:2100:fp8,256:2100:bf16,1024:600:bf16,64:2100:bf16 PYTHONPATH=$PWD \
  timeout 250 python3 -m bench.kernel_check --sections attn --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
