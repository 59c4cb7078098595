#!/bin/bash
# Session 33 (~5 min; carry .carry/tokenizer; `tree.sh _b 2042529` first, rm -rf _b after): int4's tensor-core kernel
# with SMALL_TILES (64 outputs, 4 warps a program up to 16 rows) against _b/ (the old 128 x 8 warps): the engine at 8
# streams, int4 here and bf16 (issue 22's target: 1.3x bf16), then `kernel_check --sections int4` in both.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
kc() { (cd $1 && PYTHONPATH=$PWD timeout 70 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc-$2 \
  > $OUT/r/kc-$2.log 2>&1); save; }
B="--shape llama3.1-8b --plan int4 --workloads 128x128 --concurrency 8 --phase-timeout 60"
e() { (cd $1 && PYTHONPATH=$PWD timeout 70 python3 -m bench.run $B --phases $3 --out $OUT/r/e-$2 > $OUT/r/e-$2.log \
  2>&1); save; }
e . int4 engine_int4; e . bf16 engine
kc . new; kc _b base
rm -rf $OUT/r
