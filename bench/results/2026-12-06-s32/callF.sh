#!/bin/bash
# Session 32 (~2 min; carry .carry/tokenizer): the int4 GPU tests after call E: the model test's int4 bound (2.5e-2)
# and the tensor-core kernel's group sums against the float32 product (nearer than the twin's, in bf16 too?).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "int4" > $OUT/r/tests.log 2>&1
(cd $OUT && tar czf r.tgz r); rm -rf $OUT/r
