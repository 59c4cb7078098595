#!/bin/bash
# Session 24, call 2 (after call 1 = s23-prefetch.sh: its three changes removed). 0) The GPU tests of the touched
# kernels, no -x (call 1 stopped at rmsnorm_quant_fp8's first failure). 1) Where a batch-1 step's time goes, kernel by kernel (bf16, fp8; s22-shapes.sh's profile). 2)
# s22-split-int4.sh's A/B: 8775101 (_prev/) then this tree, 2048/128 at 256 streams. r.tgz saved after each part.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
T="tests/test_kernels.py tests/test_kernels_int4.py tests/test_kernels_attention.py tests/test_kernels_model.py"
K="pdl or prefetch or gemv or wmm or decode_attention or fast_path or quant"
PYTHONPATH=$PWD timeout 130 python3 -m pytest -q -rf $T -k "$K" > $OUT/r/tests.log 2>&1
save
PROFILE_SHAPE=llama3.1-8b PROFILE_CASES=bf16:1,fp8:1 PYTHONPATH=$PWD timeout 100 python3 -m bench.kernel_check \
  --sections profile --out $OUT/r/prof > $OUT/r/prof.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 8"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/split-$2 > $OUT/r/split-$2.log 2>&1); save; }
ab _prev prev1
ab . new
