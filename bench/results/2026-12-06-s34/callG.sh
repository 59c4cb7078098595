#!/bin/bash
# Session 34 (~6 min; carry nothing): the Gluon W4A16 prototype (gluon/w4wg.py: W the register operand of async
# wgmma, x by TMA, two groups' operands alternating so ptxas keeps the wgmmas in flight): its error against
# dequantize + F.linear, then its time over the Llama-3.1-8B linears at 8-256 rows beside w4mm and bf16 cuBLAS.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
W4WG=correct PYTHONPATH=$PWD timeout 170 python3 bench/results/2026-12-06-s34/gluon/bench_w4wg.py > $OUT/r/correct.log 2>&1
cp $OUT/r/w4wg.json $OUT/r/correct.json 2>/dev/null
W4WG=time PYTHONPATH=$PWD timeout 370 python3 bench/results/2026-12-06-s34/gluon/bench_w4wg.py > $OUT/r/time.log 2>&1
tail -5 $OUT/r/correct.log; grep "best" $OUT/r/time.log
