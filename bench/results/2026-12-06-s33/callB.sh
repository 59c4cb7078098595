#!/bin/bash
# Session 33 (~8 min; carry .carry/tokenizer; `bash bench/results/2026-12-05-next-calls/tree.sh _b 528c7f8` first,
# `rm -rf _b` after): the tensor-core int4 kernel's codes made by inline PTX four bytes at a time
# (int4.MM_PTX_CODES, int4_codes.ptx_codes): its GPU tests (bit for bit the portable codes) and the int4 model
# tests cut from s32's call F; then `kernel_check --sections int4` here and in _b/ (528c7f8), alternating, and the
# engine at 8 streams in both.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "ptx or small_case or group_sums or float32 or int4_sym or int4_asym" > $OUT/r/tests.log 2>&1
save
kc() { (cd $1 && PYTHONPATH=$PWD timeout 70 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
kc . new1; kc _b base1; kc . new2
B="--shape llama3.1-8b --plan int4 --phases engine_int4 --concurrency 8 --phase-timeout 60"
e() { (cd $1 && PYTHONPATH=$PWD timeout 70 python3 -m bench.run $B --out $OUT/r/e-$2 > $OUT/r/e-$2.log 2>&1); save; }
e . new8; e _b base8
rm -rf $OUT/r
