#!/bin/bash
# Session 17 call 10: the final decode_config (partitions toward 1,024 programs, one warp, 3 stages): per-kernel A/B.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
DECODE_ONLY=1 PYTHONPATH=$PWD timeout 50 python3 _gpu/attn_ab.py $OUT/r/ab-new.json > $OUT/r/ab-new.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
