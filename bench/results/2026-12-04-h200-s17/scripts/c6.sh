#!/bin/bash
# Session 17 call 6: decode kernel reading one cache block per load (scalar base address): GPU tests; A/B against HEAD
# (_prev) per kernel and end to end (1000/1000 at 256 streams, fp8 weights + fp8 KV).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 100 python3 -m pytest -q tests/test_kernels.py -k "decode" 2>&1 | tail -3 > $OUT/r/tests.txt
DECODE_ONLY=1 PYTHONPATH=$PWD timeout 60 python3 _gpu/attn_ab.py $OUT/r/ab-new.json > $OUT/r/ab-new.log 2>&1
(cd _prev && DECODE_ONLY=1 PYTHONPATH=$PWD timeout 60 python3 ../_gpu/attn_ab.py $OUT/r/ab-prev.json > $OUT/r/ab-prev.log 2>&1)
B="--shape llama3.1-8b --plan trtllm_short --serving max_batch_size=1024 --waves 2 --phase-timeout 150"
run() {  # name dir phase workload streams
  (cd $2 && timeout 165 python3 -m bench.run $B --phases $3 --workloads $4 --concurrency $5 --out $OUT/r/$1 > $OUT/r/$1.log 2>&1)
}
run kv8-1000-new . engine_fp8_kv8_t8192 1000x1000 256
run kv8-1000-prev _prev engine_fp8_kv8_t8192 1000x1000 256
cd $OUT && tar czf r.tgz r && rm -rf r
