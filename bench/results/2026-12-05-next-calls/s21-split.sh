#!/bin/bash
# Twenty-first session: a mixed step's leading decode rows through the decode kernel (AttentionMetadata.split)
# against 8775101's one varlen launch, 2048/128 at 256 streams (8 waves), the workload of record where mixed steps
# of 8,192 tokens dominate; the split's GPU test first; then the guide's 600+ requests/s. Before the call, in an
# empty _prev/: `git archive 8775101 llmserve | tar x -C _prev`, this tree's bench beside it (`cp -r bench _prev/
# && rm -rf _prev/bench/results`) and `ln -s ../.carry _prev/.carry`; carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 90 python3 -m pytest -q -x tests/test_kernels_attention.py -k "mixed_step or varlen" -p no:cacheprovider \
  > $OUT/r/tests.log 2>&1
PYTHONPATH=$PWD timeout 60 python3 bench/results/2026-12-05-h200-s21/scripts/prefill_attn_ab.py $OUT/r/prefill_attn.json \
  > $OUT/r/prefill_attn.log 2>&1
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 8"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 110"
PYTHONPATH=$PWD timeout 120 python3 -m bench.run $S --out $OUT/r/split-new > $OUT/r/split-new.log 2>&1
(cd _prev && PYTHONPATH=$PWD timeout 120 python3 -m bench.run $S --out $OUT/r/split-prev > $OUT/r/split-prev.log 2>&1)
(cd $OUT && tar czf split.tgz r && rm -rf r/split-*)
PYTHONPATH=$PWD timeout 150 python3 -m bench.run --shape llama3.1-8b --plan guide --serving max_batch_size=1024 \
  --phase-timeout 140 --phases engine_fp8_kv8_t8192 --concurrency 512,1024,2048 \
  --out $OUT/r/guide > $OUT/r/guide.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
