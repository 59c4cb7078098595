#!/bin/bash
# Session 24, call 3 (about 9 minutes; carry .carry/tokenizer only, with _prev/ and _base/ made by next-calls/tree.sh:
# the whole .carry and both trees pass the 64 MiB a call takes). 0) The GPU tests of fresh prompts' attention over
# their own K/V (s22-fresh.sh's). 1) s22-split-int4.sh's A/B, 2048/128 at 256 streams: 8775101 (_prev/) then this
# tree (the decode rows of a mixed step through the decode kernel, 72f6fa5, and fresh prompts' attention). 2) The
# same workload on 8ba3916 (_base/: the tree before the fresh-prompt change), if time is left. r.tgz after each.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 80 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels.py \
  tests/test_kernels_model.py -k "varlen or fresh or mixed or rope or graph" > $OUT/r/tests.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 6"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
ab _prev prev
ab . new
ab _base base
