#!/bin/bash
# Session 25, call 2 (about 6 minutes; carry .carry/tokenizer; `bash bench/results/2026-12-05-next-calls/tree.sh
# _prev 8775101` first, `rm -rf _prev` after): call2b.sh's A/B without its tests and kernels (call1.sh has them).
# 2048/128 at 256 streams, 8775101 (_prev/) then this tree: the twenty-second session's default-on changes (a mixed
# step's decode rows through the decode kernel; fresh prompts over their own K/V); the twenty-fifth session's
# folds change only steps of up to 16 rows (32 for fp8), rare here.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 6"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
ab _prev prev
ab . new
ab _prev prev2
