#!/bin/bash
# Session 17 call 5: the per-page decode prototype with V transposed (vt1) and V stored like K (vt0).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
OUT=$OUT/r timeout 300 python3 _gpu/vt_proto.py > $OUT/r/vt.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
