#!/bin/bash
# Session 31, call V (~3.5 min, the device time left; carry .carry/tokenizer). Issue 22: qkv's rotary embedding and
# cache write in the paired int4 GEMV's epilogue (int4.ROPE_IN_GEMV, as the 8-bit GEMV's `rope`): its GPU tests, then
# the engine at one stream beside the int4 read floor (call S's command: 2.958 ms a token without it).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 90 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "rotates or folds or gate_out or pair or int4_asym or int4_sym" > $OUT/r/tests.log 2>&1
save
timeout 120 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine_int4 --concurrency 1 \
  --phase-timeout 100 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
save; rm -rf $OUT/r
