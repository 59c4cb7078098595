#!/bin/bash
# Session 34 (~2 min): w4wg4.py's x-through-registers variant of int4_wgmma.py at 2-16 rows (errors, times).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 200 python3 bench/results/2026-12-06-s34/gluon/bench_xreg.py > $OUT/r/xreg.log 2>&1
tail -12 $OUT/r/xreg.log
