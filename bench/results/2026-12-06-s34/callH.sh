#!/bin/bash
# Session 34 (~8 min; carry .carry/tokenizer): int4_wgmma.py (the Gluon int4 matmul w4mm takes for bf16 on Hopper from
# 2 rows to WGMMA_ROWS): the GPU tests, the engine at 8 and 256 streams int4 against bf16 (issue 22's 1.3x and 1.0x),
# kernel_check's int4 (all linears, M = 1, 8, 64, 256) and int4_paths (Triton / Gluon / dequantize + cuBLAS, 64-2,048
# rows: where WGMMA_ROWS belongs).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -rf -x tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "wgmma or match_the_torch_twin or float32 or many_rows or split_k or int4" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
e() { PYTHONPATH=$PWD timeout $3 python3 -m bench.run --shape llama3.1-8b --plan int4 --workloads 128x128 \
  --concurrency $1 --phase-timeout $(( $3 - 10 )) --phases $2 --out $OUT/r/e-$2-$1 > $OUT/r/e-$2-$1.log 2>&1; save; }
e 8 engine_int4 70; e 8 engine 70
kc() { PYTHONPATH=$PWD timeout $2 python3 -m bench.kernel_check --sections $1 --out $OUT/r/kc-$1 > $OUT/r/kc-$1.log 2>&1
  save; }
kc int4 70
e 256 engine_int4 110; e 256 engine 110
kc int4_paths 150
grep -h "tok/s\|output_tok" $OUT/r/e-*.log | tail -8; grep -h "ms over all" $OUT/r/kc-*.log
rm -rf $OUT/r
