#!/bin/bash
# Session 32 (~3 min, right after call C on the same machine; carry .carry/tokenizer): the int4 paths over all linears
# at 64-2,048 rows (`kernel_check --sections int4_paths`): the tensor-core kernel (group sums scaled up to 64 rows a
# program), W dequantized whole + cuBLAS, and W through a 16 or 32 MB buffer a chunk of rows at a time
# (`w4mm_dequant(chunk_bytes=)`, which L2 may keep: the whole-W path writes and reads 2 bytes a weight in HBM).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 240 python3 -m bench.kernel_check --sections int4_paths --out $OUT/r/paths \
  > $OUT/r/paths.log 2>&1
save; rm -rf $OUT/r
