#!/bin/bash
# Session 26, call 1b (about 3 minutes, right after call 1 on the same warm H200; no carry): `s22-fresh.sh`'s first
# three parts, as run: the GPU tests of the fresh-prompt and varlen paths, `kernel_check --sections varlen` (a
# prefill graph's work list padded / exact / persistent; the varlen kernel over a bf16 cache, an fp8 cache and the
# prompts' own K/V through pointers and TMA) and `--sections varlen_sweep` over four launch configs.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1; mkdir -p $OUT/r
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -x tests/test_kernels_attention.py tests/test_kernels.py \
  tests/test_kernels_model.py -k "varlen or fresh or mixed or rope or graph" > $OUT/r/tests.log 2>&1
PYTHONPATH=$PWD timeout 150 python3 -m bench.kernel_check --sections varlen --out $OUT/r/varlen > $OUT/r/varlen.log 2>&1
VARLEN_CONFIGS=64/64/4/2,128/64/8/2,128/64/8/3,64/128/4/2 PYTHONPATH=$PWD timeout 100 \
  python3 -m bench.kernel_check --sections varlen_sweep --out $OUT/r/sweep > $OUT/r/sweep.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
