#!/bin/bash
# Issue 18: prefill graphs' varlen launch walks only the real entries of its padded work list (persistent, the
# twenty-second session's change after 55bbcec). Every mixed step at the default max_num_tokens (2,048) runs in a
# prefill graph; before, its varlen launch ran a program per entry of a list padded to the bucket's most query blocks
# (1,089 entries x 8 KV heads at 1,024 tokens with max_batch_size 1,024), most of them idle. About 7 minutes: 128/128
# and 1000/1000 with fp8 weights and KV cache at the default token budget, 256 streams, 55bbcec (_base2/) then this
# tree then _base2 again. (`s22-fresh.sh`'s kernel_check times the launch itself, padded against exact and
# persistent.) Before the call: `bash bench/results/2026-12-05-next-calls/tree.sh _base2 55bbcec` (delete _base2/
# after); carry .carry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8 --waves 3"
S="$S --workloads 128x128,1000x1000 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/graphs-$2 > $OUT/r/graphs-$2.log 2>&1); }
ab _base2 base1
ab . new
ab _base2 base2
cd $OUT && tar czf r.tgz r && rm -rf r
