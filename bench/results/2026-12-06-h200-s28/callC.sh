#!/bin/bash
# Session 28, call C (about 9.5 minutes; carry .carry/tokenizer): fresh prompts' attention through torch's
# FlashAttention varlen (llmserve/kernels/fresh_flash.py, varlen.FRESH_FLASH off), in order of what the device time
# allows: its GPU tests, which torch calls serve fresh prompts' attention fastest (prefill_attn_ab2.py: SDPA cuDNN
# with GQA, nested jagged tensors, varlen_attn), 2048/128 at 256 streams (Llama-3.1-8B, fp8, 4 waves) in this tree
# and in _fl/ (alternating), then varlen_inputs.py in this tree while time is left. Make _fl/ first: a copy of this
# tree's llmserve and bench (results left out, a .carry link as tree.sh makes) with `FRESH_FLASH = True` in
# _fl/llmserve/kernels/varlen.py. `kernel_check --sections varlen_chunk` (or varlen) times the flash case alone.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ROOT=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
PYTHONPATH=$ROOT timeout 90 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels_model.py \
  -k "fresh" > $OUT/r/tests.log 2>&1
save
(cd bench/results/2026-12-05-h200-s21/scripts && PYTHONPATH=$ROOT timeout 100 python3 prefill_attn_ab2.py \
  $OUT/r/prefill_attn2.json > $OUT/r/prefill_attn2.log 2>&1)
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 4"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 100"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 110 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
for run in ". base" "_fl flash" ". base2" "_fl flash2"; do
  [ $((SECONDS - start)) -lt ${AB_UNTIL:-460} ] || break
  ab $run
done
if [ $((SECONDS - start)) -lt ${AB_UNTIL:-460} ]; then
  OUT=$OUT/r TREE=new PYTHONPATH=$ROOT timeout $((${END_AT:-575} - SECONDS + start)) python3 \
    bench/results/2026-12-05-h200-s26/varlen_inputs.py > $OUT/r/inputs-new.log 2>&1
fi
save; rm -rf $OUT/r
