#!/bin/bash
# Session 41 (~6-8 min; carry .carry/tokenizer): an H200: issue 22's runs of record (s36's callS.sh); an H100: the
# int4 GPU tests that callA's 150 s limit cut (test_kernels_int4_mma.py, test_int4.py) and the one-stream int4 and
# fp8 engine with and without the int8 lm_head at 128/128 and 2048/128, on the tree without the K split (s40's
# callD/rec has the same runs on d6be831, with the split code present and off).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash bench/results/2026-12-07-s36/callS.sh; exit
fi
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4_mma.py tests/test_int4.py > $OUT/r/tests.log 2>&1
tail -2 $OUT/r/tests.log; save
timeout 330 python3 -m bench.run --shape llama3.1-8b --plan int4 \
  --phases floor,engine_int4,engine_int4_head8,engine_fp8,engine_fp8_head8 --workloads 128x128,2048x128 \
  --concurrency 1 --phase-timeout 120 --out $OUT/r/rec > $OUT/r/rec.log 2>&1
grep -E "^\| (engine|int4|floor|fp8)|rc=" $OUT/r/rec.log | tail -12; save; rm -rf $OUT/r
