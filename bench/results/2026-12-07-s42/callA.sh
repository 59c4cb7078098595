#!/bin/bash
# Session 42 (~7 min; carry .carry/tokenizer). An H200: issue 22's runs of record (s36's callS.sh). An H100: this
# folder's natural-pairs.patch applied to llmserve/kernels/int4_pairs.py (x's natural pairs up to NATURAL_MAX_K, and
# a PDL 2 that lets the next kernel launch after the loop), the paired GEMV's tests with it; probe_pdl.py (natural
# against spread pairs; why the paired GEMV loses under PDL: its PDL code and launch apart, a late trigger, the next
# programs' placement); then the batch-1 int4 decode graph with each kernel module's PDL on or off (kernel_check
# pdl, Llama-3.1-8B).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  RUN_UNTIL=${RUN_UNTIL:-400} bash bench/results/2026-12-07-s36/callS.sh; exit
fi
git apply bench/results/2026-12-07-s42/natural-pairs.patch || patch -p1 < bench/results/2026-12-07-s42/natural-pairs.patch
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 90 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_int4_mma.py \
  -k "pair or gate_out or rotates or fold or norm or add" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
timeout 200 python3 bench/results/2026-12-07-s42/probe_pdl.py > $OUT/r/probe.log 2>&1; tail -30 $OUT/r/probe.log; save
BENCH_PDL_SHAPE=llama3.1-8b BENCH_PDL_WEIGHTS=int4_sym BENCH_PDL_SIZES=1 \
  BENCH_PDL_MASKS=none,linear+fused+int4,linear+fused+int4+int4_pairs \
  timeout 150 python3 -m bench.kernel_check --sections pdl --out $OUT/r/pdl > $OUT/r/pdl.log 2>&1
grep "pdl on" $OUT/r/pdl.log; tail -3 $OUT/r/pdl.log; save; rm -rf $OUT/r
