#!/bin/bash
# Prepared in session 29 for an H200 (about 9.5 minutes; carry .carry/tokenizer; no comparison tree): issue 18's runs
# of record with the eager attention of 8,192-token steps (an H100 gave 2048/128 +10.7%, 128/128 +2.0%): 2048/128 at
# 256 and 512 streams (the first run also compiles), 1000/1000 at 256 (2 waves), then the guide's 128/32 at 1,024
# streams (`--plan guide`) while time is left. Results go to one report (`--resume`). First (~1 min), the attention of a
# small mixed step in a prefill graph today against an eager step's split (`kernel_check --sections mixed_graph`): what
# decode-heavy workloads' mixed steps would gain from the split in graphs.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
timeout 90 python3 -m bench.kernel_check --sections mixed_graph --out $OUT/r/mixed > $OUT/r/mixed.log 2>&1
save
A="--shape llama3.1-8b --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --out $OUT/r/rec --resume"
run() {
  [ $((SECONDS - start)) -lt ${RUN_UNTIL:-400} ] || return
  timeout 150 python3 -m bench.run $A --phase-timeout 140 --plan $1 --waves $2 --workloads $3 --concurrency $4 \
    >> $OUT/r/rec.log 2>&1; save
}
run trtllm 4 2048x128 256
run trtllm 4 2048x128 512
run trtllm 2 1000x1000 256
run guide 4 128x32 1024
save; rm -rf $OUT/r
