#!/bin/bash
# Session 15 call 2: decode attention at Llama-3.1-8B heads, wider sweep (warps 1-2), and ncu of the defaults.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
ATTN_HEADS=32,8 ATTN_CASES=256:2100:fp8,256:2100:bf16 ATTN_WARPS=1,2,4 ATTN_BLOCKS=32,64,128 ATTN_STAGES=2,3,4 \
  timeout 330 python3 -m bench.kernel_check --sections attn --out $OUT/r/attn > $OUT/r/attn.log 2>&1
for kv in fp8 bf16; do
  timeout 60 ncu --kernel-name regex:_decode_kernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    python3 _gpu/attn_one.py $kv > $OUT/r/ncu-$kv.txt 2>&1
done
cd $OUT && tar czf r.tgz r && rm -rf r
