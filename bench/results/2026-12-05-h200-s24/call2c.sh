#!/bin/bash
# Session 24, the shortest of its calls (about 4 minutes; carry .carry/tokenizer), and call2b.sh's first part: the
# GPU tests of the kernels touched and the fp8 kernels at 2-32 rows.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
T="tests/test_kernels.py tests/test_kernels_attention.py tests/test_kernels_model.py tests/test_kernels_fp8_mm.py"
K="pdl or gemv or wmm or quant or fp8 or fast_path or varlen or fresh or mixed or rope or gate_out"
timeout 120 python3 -m pytest -q -rf $T -k "$K" > $OUT/r/tests.log 2>&1
save
MM_SHAPE=llama3.1-8b MM_MS=2,8,32 timeout 100 python3 -m bench.kernel_check --sections fp8rows --out $OUT/r/fp8rows \
  > $OUT/r/fp8rows.log 2>&1
save
