#!/bin/bash
# Twenty-first session's second device call: int4-engine-call.sh's engine targets without its gemv1 sweep (the
# device time left). Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
timeout 300 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine,engine_int4 \
  --phase-timeout 140 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
