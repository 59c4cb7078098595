#!/bin/bash
# Session 35 (~8 min): kernel_check's int4_wgmma_sweep at 128-1,024 rows (BLOCK_M 256 from 256 rows, 8 warps, 3
# stages: two programs a multiprocessor) with bf16 cuBLAS beside each linear.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
INT4_WGMMA_ROWS=256,1024,128,512 PYTHONPATH=$PWD timeout 560 python3 -m bench.kernel_check \
  --sections int4_wgmma_sweep --out $OUT/r/kc-sweep > $OUT/r/kc-sweep.log 2>&1
grep -h "default" $OUT/r/kc-sweep.log; save
rm -rf $OUT/r
