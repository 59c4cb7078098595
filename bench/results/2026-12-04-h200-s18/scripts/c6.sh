#!/bin/bash
# new (the tree: fp8_mm for 33-256 rows, fast accumulation on) against prev (HEAD before it, _prev/ from git archive)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fp8_mm.py tests/test_kernels.py tests/test_kernels_model.py -k "fp8 or wmm" > $OUT/r/tests.log 2>&1
B="--shape llama3.1-8b --plan engine_quant --phases engine_fp8 --workloads 128x128 --concurrency 64 --phase-timeout 55"
PYTHONPATH=$PWD timeout 60 python3 -m bench.run $B --out $OUT/r/new-64 > $OUT/r/new-64.log 2>&1
(cd _prev && PYTHONPATH=$PWD timeout 60 python3 -m bench.run $B --out $OUT/r/prev-64 > $OUT/r/prev-64.log 2>&1)
A="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --waves 2 --phases engine_fp8_kv8_t8192 --concurrency 256 --workloads 1000x1000 --phase-timeout 85"
PYTHONPATH=$PWD timeout 90 python3 -m bench.run $A --out $OUT/r/new-1000 > $OUT/r/new-1000.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
