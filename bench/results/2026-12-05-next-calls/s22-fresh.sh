#!/bin/bash
# Issue 18: fresh prompts' attention over their own K/V from the qkv buffer (the twenty-second session's change;
# before it, every prompt read its K/V back from the cache, and an fp8 cache made that 13-37% slower), and prefill
# graphs' persistent varlen launch. About 9 minutes. 0) The kernels' GPU tests (the persistent launch and prefill
# graphs among them). 1) `kernel_check --sections varlen`: a prefill graph's launch, its padded work list against an
# exact one and the persistent launch; then per layer our varlen kernel over a bf16 and an fp8 cache and over the
# prompts' own K/V (pointer and TMA loads), side by side in one process, SDPA dense beside it. 2) The launch configs
# on the fresh cases (VARLEN_CONFIGS: today's (64, 64, 4, 2) among them). 3) End to end, 2048/128 at 256 streams, fp8
# weights and KV cache: 8ba3916 (the tree before the change, in _base/) then this tree, 6 waves each. Before the call:
# `bash bench/results/2026-12-05-next-calls/tree.sh _base 8ba3916` (delete _base/ after: it is not ignored by git);
# carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
# The kernels' tests on the GPU first (the fp8 cache and TMA cases skip on the CPU)
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -x tests/test_kernels_attention.py tests/test_kernels.py \
  tests/test_kernels_model.py -k "varlen or fresh or mixed or rope or graph" > $OUT/r/tests.log 2>&1
PYTHONPATH=$PWD timeout 120 python3 -m bench.kernel_check --sections varlen --out $OUT/r/varlen \
  > $OUT/r/varlen.log 2>&1
VARLEN_CONFIGS=64/64/4/2,128/64/8/2,128/64/8/3,64/128/4/2 PYTHONPATH=$PWD timeout 60 \
  python3 -m bench.kernel_check --sections varlen_sweep --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 6"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/fresh-$2 > $OUT/r/fresh-$2.log 2>&1); }
ab _base base
ab . new
cd $OUT && tar czf r.tgz r && rm -rf r
