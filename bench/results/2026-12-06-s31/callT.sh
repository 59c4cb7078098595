#!/bin/bash
# Session 31, call T (~3 min; carry .carry/tokenizer). Issue 22: asymmetric weights take the launch shapes call S's
# sweep found (pairs_config): the int4 GPU tests (kernels and model) and `kernel_check --sections int4`.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 170 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "pair or word or match or gate_out or int4" > $OUT/r/tests.log 2>&1
save
timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc > $OUT/r/kc.log 2>&1
save; rm -rf $OUT/r
