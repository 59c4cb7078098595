#!/bin/bash
# Session 36 (~5 min, any Hopper GPU): where int4's step time goes against bf16's at 256 streams (kernel_check's
# profile section: the first prefill step, a mixed step, the decode graph of 256 rows, per kernel, Llama-3.1-8B shape),
# then the int4 GPU tests (the twin test's down_proj case at 300 rows: wgmma_config's 256-row blocks, K split 2).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PROFILE_SHAPE=llama3.1-8b PROFILE_CASES=int4_sym:256,bf16:256 timeout 300 python3 -m bench.kernel_check \
  --sections profile --out $OUT/r/prof > $OUT/r/prof.log 2>&1
grep "^profile" $OUT/r/prof.log | cut -c1-400; save
timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "wgmma or no_rows or many_rows or small_case or twin" \
  > $OUT/r/tests.log 2>&1; tail -2 $OUT/r/tests.log; save
rm -rf $OUT/r
