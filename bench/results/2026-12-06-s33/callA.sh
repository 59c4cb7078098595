#!/bin/bash
# Session 33 (~9.5 min; carry .carry): test_kernels_model.py's four int4 cases (cut from s32's call F), then, on an
# H200, callJ.sh's runs of record (issue 18) with the time left.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/t
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/t/gpu.txt
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -rf tests/test_kernels_model.py -k "int4" > $OUT/t/tests.log 2>&1
(cd $OUT && tar czf t.tgz t); rm -rf $OUT/t
if nvidia-smi --query-gpu=name --format=csv | grep -q H200; then
  RUN_UNTIL=${RUN_UNTIL:-300} bash bench/results/2026-12-06-h200-s29/callJ.sh
fi
