#!/bin/bash
# Session 38 (~6-8 min; carry .carry/tokenizer): whichever card comes. An H200: issue 22's runs of record
# (bench/results/2026-12-07-s36/callS.sh, with 2-8 rows on int4_mma and s38's wgmma_config; RUN_UNTIL cuts it short).
# An H100: callZ.sh (the int4 tests, the engine at 256 streams int4 against bf16). It ran first with
# bench/results/2026-12-06-s35/callM.sh as its H100 branch (the sweep in callY/).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash bench/results/2026-12-07-s36/callS.sh
else
  bash bench/results/2026-12-07-s38/callZ.sh
fi
