#!/bin/bash
# Session 44 (~8 min, any Hopper GPU; carry .carry/tokenizer), on main since x's natural pairs landed: the paired
# GEMV's GPU tests (the folds test now against the exact product; under PDL the same bits as plainly), the batch-1 int4
# decode graph with each kernel module's PDL on or off (the paired GEMV's PDL now lets the next kernel launch only
# after its loop: callA's probe had all four linears at 1.789 ms so, against 1.850 plainly), then the engine at one
# stream with int4.PAIRS_PDL off, then on; between them down_proj's and o_proj's launch shapes again (probe_shapes.py).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 80 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair_gemv or gate_out or rotates or folds_the_res or under_pdl or launches_plainly" \
  > $OUT/r/tests.log 2>&1
tail -4 $OUT/r/tests.log; save
BENCH_PDL_SHAPE=llama3.1-8b BENCH_PDL_WEIGHTS=int4_sym BENCH_PDL_SIZES=1 \
  BENCH_PDL_MASKS=none,linear+fused+int4,linear+fused+int4+int4_pairs \
  timeout 100 python3 -m bench.kernel_check --sections pdl --out $OUT/r/pdl > $OUT/r/pdl.log 2>&1
grep "pdl on" $OUT/r/pdl.log; tail -2 $OUT/r/pdl.log; save
timeout 60 python3 bench/results/2026-12-08-s44/probe_shapes.py > $OUT/r/shapes.log 2>&1; cat $OUT/r/shapes.log; save
A="--shape llama3.1-8b --plan int4 --workloads 128x128,2048x128 --concurrency 1 --phase-timeout 110"
timeout 120 python3 -m bench.run $A --phases floor,engine_int4 --out $OUT/r/off > $OUT/r/off.log 2>&1; save
sed -i 's/^PAIRS_PDL = False/PAIRS_PDL = True/' llmserve/kernels/int4.py
timeout 120 python3 -m bench.run $A --phases engine_int4 --out $OUT/r/on > $OUT/r/on.log 2>&1
grep -hE "^\| (engine|int4|floor)" $OUT/r/off/results.md $OUT/r/on/results.md; save; rm -rf $OUT/r
