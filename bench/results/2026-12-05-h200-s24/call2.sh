#!/bin/bash
# Session 24, call 2 (after call 1 = s23-prefetch.sh, whose three changes are removed). About 8 minutes; r.tgz
# saved after each part. 0) The GPU tests of the kernels touched (no -x: call 1 stopped at rmsnorm_quant_fp8's
# first failure) and of `wmm_fp8`. 1) fp8 linears at 2-32 rows: weights converted in `wmm` (today) against e4m3
# rows into `wmm_fp8` and `fp8_mm`, kernels (`--sections fp8rows`) then the engine's decode steps at 2-32 rows
# with SKINNY_MAX_M["fp8"] 32 / 1 / 32 (`--sections switches`). 2) Where a batch-1 step's time goes, kernel by kernel
# (bf16, fp8; s22-shapes.sh's profile). Carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
T="tests/test_kernels.py tests/test_kernels_int4.py tests/test_kernels_attention.py tests/test_kernels_model.py"
K="pdl or gemv or wmm or decode_attention or fast_path or quant or fp8"
timeout 130 python3 -m pytest -q -rf $T tests/test_kernels_fp8_mm.py -k "$K" > $OUT/r/tests.log 2>&1
save
MM_SHAPE=llama3.1-8b timeout 150 python3 -m bench.kernel_check --sections fp8rows --out $OUT/r/fp8rows \
  > $OUT/r/fp8rows.log 2>&1
save
timeout 170 python3 -m bench.kernel_check --sections switches --out $OUT/r/fp8eng > $OUT/r/fp8eng.log 2>&1
save
PROFILE_SHAPE=llama3.1-8b PROFILE_CASES=bf16:1,fp8:1 timeout 90 python3 -m bench.kernel_check --sections profile \
  --out $OUT/r/prof > $OUT/r/prof.log 2>&1
save
