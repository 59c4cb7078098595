#!/bin/bash
# Session 26, call 1 (about 9 minutes; carry .carry/tokenizer): which change since 8775101 serves 2048/128 at 256
# streams 3.6% slower (s25 call 7, H100). Four trees, each with this tree's bench: _t1 8775101 (the faster one),
# _t2 8ba3916 (+ the mixed step's decode rows through the decode kernel, 72f6fa5; DEQUANT_ROWS), _t3 7102b7c (+ the
# twenty-second session's fresh prompts over their own K/V and the persistent prefill-graph launch), . (+ PDL
# trigger-first, the attention's last launch under PDL, the twenty-fifth session's decode folds). Run in that order,
# then back while the call's time lasts. Before the call: `bash bench/results/2026-12-05-next-calls/tree.sh _t1
# 8775101` (and _t2 8ba3916, _t3 7102b7c); remove them after.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 4"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 120"
start=$SECONDS
ab() { (cd $1 && PYTHONPATH=$PWD timeout 140 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1)
       (cd $OUT && tar czf r.tgz r); }
for run in "_t1 t1" "_t2 t2" "_t3 t3" ". new" ". new2" "_t3 t3b" "_t2 t2b" "_t1 t1b"; do
  [ $((SECONDS - start)) -lt 450 ] || break
  ab $run
done
