#!/bin/bash
# Session 28, call B (about 9 minutes; carry .carry/tokenizer): fresh prompts' attention through torch's
# FlashAttention varlen (llmserve/kernels/fresh_flash.py, varlen.FRESH_FLASH off). Its GPU tests, `kernel_check
# --sections varlen_chunk` (3 fresh prompts of 2,048 and a chunk after its cached prefix: the kernel's launches
# against flash then the chunk's launch), then 2048/128 at 256 streams (Llama-3.1-8B, fp8, 4 waves) in this tree
# and in _fl/ (this tree's llmserve with FRESH_FLASH True; made by copying llmserve and bench, results left out),
# alternating while the call's time lasts.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels_model.py \
  -k "fresh or warm" > $OUT/r/tests.log 2>&1
save
PYTHONPATH=$PWD timeout 100 python3 -m bench.kernel_check --sections varlen_chunk --out $OUT/r/chunk \
  > $OUT/r/chunk.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 4"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 100"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
for run in ". base" "_fl flash" ". base2" "_fl flash2" ". base3" "_fl flash3"; do
  [ $((SECONDS - start)) -lt 480 ] || break
  ab $run
done
rm -rf $OUT/r
