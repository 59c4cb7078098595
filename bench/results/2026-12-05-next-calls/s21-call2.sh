#!/bin/bash
# Twenty-first session's second device call (the device time left fits one): the guide's 600+ requests/s
# (from second-call.sh), then int4-engine-call.sh's engine targets and a shortened gemv1 sweep. Carry .carry.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 150 python3 -m bench.run --shape llama3.1-8b --plan guide --serving max_batch_size=1024 \
  --phase-timeout 140 --phases engine_fp8_kv8_t8192 --concurrency 512,1024,2048 \
  --out $OUT/r/guide > $OUT/r/guide.log 2>&1
(cd $OUT && tar czf guide.tgz r/guide r/guide.log r/gpu.txt)
timeout 320 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases floor,engine,engine_int4 \
  --phase-timeout 150 --out $OUT/r/int4 > $OUT/r/int4.log 2>&1
(cd $OUT && tar czf int4.tgz r/int4 r/int4.log)
MM_SHAPE=llama3.1-8b timeout 90 python3 -m bench.kernel_check --sections gemv1 \
  --out $OUT/r/gemv1-llama3 > $OUT/r/gemv1-llama3.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
