#!/bin/bash
# Session 15 call 3: decode attention with 1-2 warps across batch sizes and head shapes; ncu of old and new fp8.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
for kv in fp8:1/128/4/3:1 fp8:1/32/1/2:1 bf16:1/64/4/3:0; do
  timeout 60 ncu --kernel-name regex:_decode_kernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    python3 _gpu/attn_one.py $kv > $OUT/r/ncu-${kv%%:*}-$(echo $kv | cut -d: -f2 | tr / _).txt 2>&1
done
export ATTN_WARPS=1,2,4 ATTN_BLOCKS=16,32,64 ATTN_STAGES=2,3 ATTN_FP8_MODES=1
ATTN_HEADS=32,8 ATTN_CASES=512:1100:fp8,64:2100:fp8,8:1100:fp8,64:2100:bf16,8:1100:bf16,1024:600:fp8,1024:600:bf16 \
  timeout 300 python3 -m bench.kernel_check --sections attn --out $OUT/r/gqa > $OUT/r/gqa.log 2>&1
ATTN_HEADS=32,32 ATTN_CASES=256:170:bf16,64:1100:bf16,256:1100:fp8 \
  timeout 150 python3 -m bench.kernel_check --sections attn --out $OUT/r/mha > $OUT/r/mha.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
