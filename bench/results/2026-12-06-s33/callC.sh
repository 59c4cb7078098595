#!/bin/bash
# Session 33 (~8 min; carry .carry/tokenizer; `tree.sh _b 528c7f8`, and `tree.sh _c add224e` with
# `sed -i 's/^DEQUANT_ROWS = 192$/DEQUANT_ROWS = 1024/; s/^ROWS_KERNEL_ROWS = DEQUANT_ROWS$/ROWS_KERNEL_ROWS = 65/'
# _c/llmserve/kernels/int4.py`; rm -rf _b _c after): the many-row int4 matmul, x the wide operand
# (llmserve/kernels/int4_rows.py at add224e, now xwide/int4_rows.py) against w4mm's paths and bf16 cuBLAS at
# 128-2,048 rows over all linears of Llama-3.1-8B (symmetric);
# then the engine at 256 streams, 128/128: int4 in _c/ (256 rows through the new kernel) and _b/ (528c7f8: dequantize
# + cuBLAS), bf16 beside.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
XWIDE_ROWS=128,256,512,2048 XWIDE_CONFIGS="128,128,8,3;128,128,8,2;128,256,8,2;256,128,8,2;64,128,4,3" \
  XWIDE_OUT=$OUT/r/sym.json PYTHONPATH=$PWD timeout 200 python3 bench/results/2026-12-06-s33/xwide/run.py \
  > $OUT/r/sym.log 2>&1
save
B="--shape llama3.1-8b --plan int4 --workloads 128x128 --concurrency 256 --phase-timeout 100"
e() { (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --phases $3 --out $OUT/r/e-$2 \
  > $OUT/r/e-$2.log 2>&1); save; }
e _c rows256 engine_int4; e _b base256 engine_int4; e . bf16 engine
rm -rf $OUT/r
