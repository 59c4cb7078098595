#!/bin/bash
# Session 44 (~9 min, any Hopper GPU; carry .carry/tokenizer): the 16/8-bit one-row GEMV (gemv.py) under PDL with the
# next kernel let in after its loop (`gemv.LATE_TRIGGER`), as the paired int4 GEMV now does (callA: the four int4
# linears 1.789 ms so against 1.850 plainly and 2.506 let in at the start). The batch-1 decode graph of Llama-3.1-8B,
# fp8 and bf16 weights, with no PDL, then the GEMV's and the fused kernels' PDL let in at the start, then after the
# loop (`kernel_check --sections pdl`; its `gemv` mask is new: before, the one-row GEMV launched plainly in this
# check whatever the mask); then the engine at one stream, fp8, 128/128, LATE_TRIGGER off, then on (the engine's
# decode graphs use PDL up to 16 rows, so today's batch-1 GEMVs let the next kernel in at their start).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
pdl() {  # weights masks tag
  BENCH_PDL_SHAPE=llama3.1-8b BENCH_PDL_WEIGHTS=$1 BENCH_PDL_SIZES=1 BENCH_PDL_MASKS=$2 \
    timeout 80 python3 -m bench.kernel_check --sections pdl --out $OUT/r/pdl_$1_$3 > $OUT/r/pdl_$1_$3.log 2>&1
  grep "pdl on" $OUT/r/pdl_$1_$3.log | sed "s/^/$1 $3 /"; save
}
A="--shape llama3.1-8b --plan int4 --workloads 128x128 --concurrency 1 --phase-timeout 100"
pdl fp8 none,gemv+fused early
pdl bf16 none,gemv+fused early
timeout 110 python3 -m bench.run $A --phases floor,engine_fp8 --out $OUT/r/off > $OUT/r/off.log 2>&1; save
sed -i 's/^LATE_TRIGGER = False/LATE_TRIGGER = True/' llmserve/kernels/gemv.py
pdl fp8 gemv+fused late
pdl bf16 gemv+fused late
timeout 110 python3 -m bench.run $A --phases engine_fp8 --out $OUT/r/on > $OUT/r/on.log 2>&1
grep -hE "^\| (engine|fp8|floor)" $OUT/r/off/results.md $OUT/r/on/results.md; save; rm -rf $OUT/r
