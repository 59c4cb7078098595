#!/bin/bash
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
mkdir -p $OUT/r
timeout 150 python3 _gpu/fp8mm.py $OUT/r/fp8mm3.json 2>&1 | grep -v Warning > $OUT/r/fp8mm3.log
export PYTHONPATH=$PWD:$PWD/_gpu/fastacc
A="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --waves 2 --phases engine_fp8_kv8_t8192 --concurrency 256"
for w in 2048x128 1000x1000; do
  timeout 100 python3 -m bench.run $A --phase-timeout 90 --workloads $w --out $OUT/r/base-$w > $OUT/r/base-$w.log 2>&1
  FAST_ACC=1 timeout 100 python3 -m bench.run $A --phase-timeout 90 --workloads $w --out $OUT/r/fast-$w > $OUT/r/fast-$w.log 2>&1
done
cd $OUT && tar czf r.tgz r && rm -rf r
