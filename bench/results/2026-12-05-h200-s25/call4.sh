#!/bin/bash
# Session 25, call 4 (about 7 minutes; carry .carry/tokenizer), after call 1: with GATE_OUT off for 16-bit weights
# at one row (slower there) and fp8 steps of 2-32 rows through `wmm_fp8` (SKINNY_MAX_M["fp8"] = 1, 64-row tiles):
# the GPU tests of the kernels and model paths touched, then the decode steps with today's defaults against the
# switches as before (an empty case is the defaults).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
K="fp8 or gate_out or folds or rotates or wmm or gemv or fast_path or rmsnorm"
timeout 170 python3 -m pytest -q -rf tests/test_kernels_fp8_mm.py tests/test_kernels_model.py tests/test_kernels.py \
  -k "$K" > $OUT/r/tests.log 2>&1
save
SWITCH_MODE=fp8 SWITCH_BATCHES=1,2,8,16,32 SWITCH_CASES=";SKINNY_MAX_M.fp8=32;" \
  timeout 130 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-fp8 > $OUT/r/sw-fp8.log 2>&1
save
SWITCH_MODE=bf16 SWITCH_BATCHES=1,8 SWITCH_CASES=";GATE_OUT=0,FOLD_NORM=0,ROPE_IN_GEMV=0;" \
  timeout 110 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-bf16 > $OUT/r/sw-bf16.log 2>&1
save
