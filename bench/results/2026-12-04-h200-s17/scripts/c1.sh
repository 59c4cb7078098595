#!/bin/bash
# Session 17 call 1: prototype decode attention with V stored [kvh, D, page] per block, against the current kernel.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
OUT=$OUT/r timeout 400 python3 _gpu/vt_proto.py > $OUT/r/vt.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
