#!/bin/bash
# Session 28, call D (about 3 minutes, no carry; what the device budget left allows of call C): the
# FlashAttention-varlen path's GPU tests, then prefill_attn_ab2.py (which torch calls serve fresh prompts' attention
# fastest, against our varlen kernel).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ROOT=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$ROOT timeout 80 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels_model.py \
  -k "fresh" > $OUT/r/tests.log 2>&1
save
(cd bench/results/2026-12-05-h200-s21/scripts && PYTHONPATH=$ROOT timeout 90 python3 prefill_attn_ab2.py \
  $OUT/r/prefill_attn2.json > $OUT/r/prefill_attn2.log 2>&1)
save; rm -rf $OUT/r
