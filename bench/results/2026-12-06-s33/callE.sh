#!/bin/bash
# Session 33 call E, after call D (~1 min; carry .carry/tokenizer): launch shapes of the tensor-core int4 kernel (w4mm as at 528c7f8) at 8
# rows, symmetric, per Llama-3.1-8B linear (`kernel_check --sections int4_sweep`, INT4_SWEEP_TILES): is there a faster
# tile for issue 22's batch-8 target than mm_config's (16, 128, 128-256, 8 warps, 3 stages, split to ~512 programs)?
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
INT4_SWEEP_ROWS=8 INT4_SWEEP_TILES="64,128,4,2;64,128,4,4;64,128,4,8;64,256,4,2;64,256,4,4;64,256,4,8;32,128,4,2;32,128,4,4;32,128,4,8;32,256,4,2;32,256,4,4;32,256,4,8;128,128,4,1;128,128,4,2;128,128,8,1;128,128,8,2;64,128,8,4" PYTHONPATH=$PWD timeout 280 python3 -m bench.kernel_check \
  --sections int4_sweep --out $OUT/r/sweep8b > $OUT/r/sweep8b.log 2>&1
(cd $OUT && tar czf r.tgz r); rm -rf $OUT/r
