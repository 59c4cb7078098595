#!/bin/bash
# Session 41 (~8 min; carry .carry/tokenizer; `bash bench/results/2026-12-05-next-calls/tree.sh _base 335bb50` first):
# an H200: issue 22's runs of record (bench/results/2026-12-07-s36/callS.sh); an H100: the int4 GPU tests after the
# K split's removal, then queue row 5 (callL.sh with FULL=1).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash bench/results/2026-12-07-s36/callS.sh
else
  mkdir -p $OUT/t
  PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_int4_mma.py \
    tests/test_int4.py > $OUT/t/tests.log 2>&1; tail -3 $OUT/t/tests.log
  FULL=1 bash bench/results/2026-12-06-s35/callL.sh
fi
