#!/bin/bash
# Session 31, call R (~5 min; carry .carry/tokenizer; `_np/`: this tree with int4.PAIRS_PDL = False). Call Q found the
# int4 batch-1 decode graph at 3.633 ms in the engine (PDL on in graphs of up to 16 rows) and 2.948 ms in
# `--sections profile` (PDL off). Which launches lose under PDL: `kernel_check --sections pdl` on Llama-3.1-8B int4_sym
# at batch 1 and 8 (every module plain; all with PDL; all but the paired int4 GEMV; all but int4's modules), then the
# engine at one stream (128/128) in this tree and with the paired GEMV launched plainly (_np/).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
BENCH_PDL_SHAPE=llama3.1-8b BENCH_PDL_WEIGHTS=int4_sym BENCH_PDL_SIZES=1,8 \
  BENCH_PDL_MASKS=none,linear+fused+int4+int4_pairs,linear+fused+int4,linear+fused,none \
  PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check --sections pdl --out $OUT/r/pdl > $OUT/r/pdl.log 2>&1
save
B="--shape llama3.1-8b --plan int4 --phases engine_int4 --concurrency 1 --workloads 128x128 --phase-timeout 100"
(PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --out $OUT/r/e-new > $OUT/r/e-new.log 2>&1); save
(cd _np && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --out $OUT/r/e-np > $OUT/r/e-np.log 2>&1); save
save; rm -rf $OUT/r
