#!/bin/bash
# Session 28, call A (about 6 minutes; no carry; `bash bench/results/2026-12-05-next-calls/tree.sh _t2 8ba3916`
# first): session 26's call5 (the engine's varlen inputs in 8ba3916 and this tree), then prefill_attn_ab2.py (which
# torch calls serve fresh prompts' attention: SDPA cuDNN with GQA, nested jagged tensors, varlen_attn).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
bash bench/results/2026-12-05-h200-s26/call5.sh
mkdir -p $OUT/p
ROOT=$PWD && cd bench/results/2026-12-05-h200-s21/scripts && PYTHONPATH=$ROOT timeout 150 python3 prefill_attn_ab2.py \
  $OUT/p/prefill_attn2.json > $OUT/p/prefill_attn2.log 2>&1
