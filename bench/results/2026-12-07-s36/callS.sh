#!/bin/bash
# Session 36 (~8 min; carry .carry/tokenizer): issue 22's int4 tests on this GPU (the twin test's down_proj case at 300
# rows: wgmma_config's 256-row blocks with K split 2), then its targets, int4 g128 then bf16 in one report: the floor,
# 128/128 at 256 streams (2 waves), 8 and 1, 2048/128 at 1.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
timeout 120 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "wgmma or no_rows or many_rows or small_case or twin" \
  > $OUT/r/tests.log 2>&1; tail -2 $OUT/r/tests.log; save
run() {  # phases workload streams [waves]
  [ $((SECONDS - start)) -lt ${RUN_UNTIL:-480} ] || return
  timeout 150 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases $1 --workloads $2 --concurrency $3 \
    ${4:+--waves $4} --phase-timeout 140 --out $OUT/r/rec --resume >> $OUT/r/rec.log 2>&1
  grep -E "^\| (engine|int4|floor)|rc=" $OUT/r/rec.log | tail -3; save
}
run engine_int4,engine 128x128 256 2
run engine_int4,engine 128x128 8
run floor,engine_int4,engine 128x128 1
run engine_int4,engine 2048x128 1
save; rm -rf $OUT/r
