#!/bin/bash
# Session 32 (~8 min; carry .carry/tokenizer; `bash bench/results/2026-12-05-next-calls/tree.sh _b 2ccbedb` and
# `tree.sh _c 0dba527` first, `rm -rf _b _c` after): the RMSNorms folded into the paired int4 GEMVs at one row
# (int4.FOLD_NORM), landed after call B: its GPU tests, then the engine at one stream here and in _b/ (2ccbedb, every
# norm launched), alternating; between them `kernel_check --sections int4` in the three trees: the tensor-core kernel
# as at 2ccbedb (_b), with the group sums scaled (_c, int4.MM_SCALE_AFTER), and here with the codes made by integer
# ops up to 16 rows (MM_MAGIC_ROWS); last the engine at 8 streams here and in _b/.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "rotates or folds or gate_out or pair or int4_asym or int4_sym or match" > $OUT/r/tests.log 2>&1
save
B="--shape llama3.1-8b --plan int4 --phases floor,engine_int4 --concurrency 1 --phase-timeout 100"
e() { (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $B --out $OUT/r/e-$2 > $OUT/r/e-$2.log 2>&1); save; }
kc() { (cd $1 && PYTHONPATH=$PWD timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
e . new1; e _b base1; kc . new1; kc _c after1; kc _b base1; kc _b base2; kc _c after2; kc . new2; e _b base2; e . new2
B="--shape llama3.1-8b --plan int4 --phases engine_int4 --concurrency 8 --phase-timeout 60"  # the tensor-core kernel
e . new8; e _b base8
rm -rf $OUT/r
