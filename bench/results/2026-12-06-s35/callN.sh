#!/bin/bash
# Session 35 (~6 min, carry .carry/tokenizer): the engine at 256 and 8 streams, int4 g128 against bf16 side by side
# (issue 22's 1.0x and 1.3x), with wgmma_config as this session left it; then the int4 GPU tests again.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
e() { PYTHONPATH=$PWD timeout $3 python3 -m bench.run --shape llama3.1-8b --plan int4 --workloads 128x128 \
  --concurrency $1 --phase-timeout $(( $3 - 10 )) --phases $2 --out $OUT/r/e-$2-$1 > $OUT/r/e-$2-$1.log 2>&1; save; }
e 256 engine_int4 90; e 256 engine 90
e 8 engine_int4 60; e 8 engine 60
for f in $OUT/r/e-*.log; do echo $f; grep -A3 "| workload | ours | best" $f | grep 128x128; done
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -rf tests/test_kernels_int4.py tests/test_kernels_model.py \
  -k "wgmma or int4" > $OUT/r/tests.log 2>&1
tail -3 $OUT/r/tests.log; save
rm -rf $OUT/r
