#!/bin/bash
# Session 15 call 4: the new decode-attention launch shapes (one warp at >= 1,024 programs) against HEAD (_prev/).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
B="--shape llama3.1-8b --plan trtllm_short --serving max_batch_size=1024 --waves 2 --phase-timeout 200"
run() {  # name dir phase workload streams
  (cd $2 && timeout 210 python3 -m bench.run $B --phases $3 --workloads $4 --concurrency $5 --out $OUT/r/$1 > $OUT/r/$1.log 2>&1)
}
run k1000-new . engine_fp8_t8192 1000x1000 256
run k1000-prev _prev engine_fp8_t8192 1000x1000 256
run kv8-1000-new . engine_fp8_kv8_t8192 1000x1000 256
run kv8-1000-prev _prev engine_fp8_kv8_t8192 1000x1000 256
run s128-new . engine_fp8_t8192 128x128 1024
run s128-prev _prev engine_fp8_t8192 128x128 1024
cd $OUT && tar czf r.tgz r && rm -rf r
