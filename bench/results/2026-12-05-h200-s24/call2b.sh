#!/bin/bash
# Session 24, the call made of call2.sh and call3.sh when device time ran short (about 9 minutes; carry
# .carry/tokenizer, _prev/ from next-calls/tree.sh _prev 8775101). 0-1) call2c.sh: GPU tests of the kernels touched
# since call 1 (linear, PDL prologue, wmm_fp8) and of fresh prompts' attention; fp8 linears at 2-32 rows, kernels
# only (`--sections fp8rows`). 2) 2048/128 at 256 streams, 8775101 (_prev/) then this tree: the twenty-second
# session's default-on changes (a mixed step's decode rows through the decode kernel; fresh prompts over their own
# K/V).
bash "$(dirname "$0")/call2c.sh"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
save() { (cd $OUT && tar czf r.tgz r); }
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 6"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
ab _prev prev
ab . new
