#!/bin/bash
# Session 26, call 4 (as run, about 2 minutes on an H100, no carry): call 3's profile in this tree three ways
# (prof_fresh.py beside this script): fresh prompts' K/V through TMA (the default), every block over the cache
# (new_kv dropped: the path before the twenty-second session), and pointer loads.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD PROFILE_SHAPE=llama3.1-8b PROFILE_PROMPT=2048
export PROFILE_CASES=fp8+kv8:4 PROFILE_SERVING=max_num_tokens=8192
mkdir -p $OUT/r
nvidia-smi --query-gpu=name --format=csv > $OUT/r/gpu.txt
for m in tma cache pointers; do
  FRESH_MODE=$m timeout 100 python3 bench/results/2026-12-05-h200-s26/prof_fresh.py --sections profile \
    --out $OUT/r/prof-$m > $OUT/r/prof-$m.log 2>&1
done
cd $OUT && tar czf r.tgz r && rm -rf r
