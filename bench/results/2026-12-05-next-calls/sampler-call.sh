#!/bin/bash
# The sampler at scale (issue 18 item 2: "the sampler over 128-152k-entry vocabularies"), one call (~7 minutes):
# the 2026-12-05 sampler (penalties for every row at once, top-k/top-p/min-p from the first ranks of each row)
# against e0b466e's on 1,024 sampled rows of Llama-3's vocabulary, then the engine at 1,024 streams of 128/128
# with chat-style sampling (temperature 0.7, top_p 0.9, repetition penalty 1.1): this tree's bench driving this
# tree's llmserve, then e0b466e's. Before the call, in an empty _prev/: `git archive e0b466e llmserve | tar x -C
# _prev`, then this tree's bench beside it (`cp -r bench _prev/ && rm -rf _prev/bench/results`: e0b466e's lacks
# --sampling); carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
PYTHONPATH=$PWD timeout 120 python3 bench/results/2026-12-05-cpu-sampler/sampler_ab.py _prev $OUT/r/sampler-1024.json \
  1024 128256 > $OUT/r/sampler.log 2>&1
S="--shape llama3.1-8b --plan trtllm_short --workloads 128x128 --concurrency 1024 --waves 2 --phases engine_fp8_kv8_t8192"
S="$S --serving max_batch_size=1024 --phase-timeout 190 --sampling temperature=0.7,top_p=0.9,repetition_penalty=1.1"
PYTHONPATH=$PWD timeout 200 python3 -m bench.run $S --out $OUT/r/sampled-new > $OUT/r/sampled-new.log 2>&1
(cd _prev && PYTHONPATH=$PWD timeout 200 python3 -m bench.run $S --out $OUT/r/sampled-prev > $OUT/r/sampled-prev.log 2>&1)
cd $OUT && tar czf r.tgz r && rm -rf r
