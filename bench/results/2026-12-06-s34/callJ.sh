#!/bin/bash
# Session 34 (~9 min, carry .carry/tokenizer): call H and call I in one (device time was short): the GPU tests of
# int4_wgmma.py, the engine at 8 and 256 streams int4 against bf16, w4wg4.py's x-through-registers variant, then
# kernel_check's int4_paths (Triton / Gluon / dequantize + cuBLAS at 64-2,048 rows: where WGMMA_ROWS belongs).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -rf -x tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "wgmma or match_the_torch_twin or float32 or many_rows or split_k or int4" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
e() { PYTHONPATH=$PWD timeout $3 python3 -m bench.run --shape llama3.1-8b --plan int4 --workloads 128x128 \
  --concurrency $1 --phase-timeout $(( $3 - 10 )) --phases $2 --out $OUT/r/e-$2-$1 > $OUT/r/e-$2-$1.log 2>&1; save; }
e 8 engine_int4 60; e 8 engine 60
e 256 engine_int4 80; e 256 engine 80
# gluon/bench_xreg.py and gluon/w4wg4.py as at da607bb (removed since: the variant was slower)
PYTHONPATH=$PWD timeout 80 python3 bench/results/2026-12-06-s34/gluon/bench_xreg.py > $OUT/r/xreg.log 2>&1; save
PYTHONPATH=$PWD timeout 120 python3 -m bench.kernel_check --sections int4_paths --out $OUT/r/kc-int4_paths \
  > $OUT/r/kc-int4_paths.log 2>&1; save
grep -h "ms over all" $OUT/r/kc-*.log; tail -4 $OUT/r/xreg.log
rm -rf $OUT/r
