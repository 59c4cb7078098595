#!/bin/bash
# Session 31, call U (~1.5 min; carry .carry/tokenizer). Asymmetric down_proj computing the gate in its loads keeps
# 4 warps (call T: 8 made the gated GEMV path 4.1 ms over all linears): `kernel_check --sections int4` and the
# paired GEMV's GPU tests.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 60 python3 -m bench.kernel_check --sections int4 --out $OUT/r/kc > $OUT/r/kc.log 2>&1
save
timeout 60 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "pair or gate_out" > $OUT/r/tests.log 2>&1
save; rm -rf $OUT/r
