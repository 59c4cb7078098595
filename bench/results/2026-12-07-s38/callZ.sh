#!/bin/bash
# Session 38 (~5 min, any Hopper GPU; carry .carry/tokenizer): int4_wgmma's launch shapes as wgmma_config now picks
# them (3 stages where 128-row blocks outnumber the SMs; down_proj's K split 4 at 129-256 rows): the int4 GPU tests,
# all linears at 128 / 256 / 512 rows (kernel_check int4_wgmma_sweep's default against bf16), then the engine at 256
# streams, 128/128, int4 g128 against bf16 in one report (s35: 0.963x).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 120 python3 -m pytest -q -rf tests/test_kernels_int4.py -k "wgmma or twin" > $OUT/r/tests.log 2>&1
tail -2 $OUT/r/tests.log; save
timeout 200 python3 -m bench.run --shape llama3.1-8b --plan int4 --phases engine_int4,engine --workloads 128x128 \
  --concurrency 256 --waves 2 --phase-timeout 95 --out $OUT/r/rec > $OUT/r/rec.log 2>&1
grep -E "^\| (engine|int4)|rc=" $OUT/r/rec.log | tail -6; save
rm -rf $OUT/r
