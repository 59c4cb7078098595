#!/bin/bash
# Session 24, the call made of call2.sh and call3.sh when device time ran short (about 9 minutes; carry
# .carry/tokenizer, _prev/ from next-calls/tree.sh _prev 8775101). 0) GPU tests: the kernels touched since call 1
# (linear, PDL prologue, wmm_fp8) and fresh prompts' attention. 1) fp8 linears at 2-32 rows, kernels only
# (`--sections fp8rows`). 2) 2048/128 at 256 streams, 8775101 (_prev/) then this tree: the twenty-second session's
# default-on changes (a mixed step's decode rows through the decode kernel; fresh prompts over their own K/V).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
T="tests/test_kernels.py tests/test_kernels_attention.py tests/test_kernels_model.py tests/test_kernels_fp8_mm.py"
K="pdl or gemv or wmm or quant or fp8 or fast_path or varlen or fresh or mixed or rope"
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -rf $T -k "$K" > $OUT/r/tests.log 2>&1
save
MM_SHAPE=llama3.1-8b MM_MS=2,8,32 PYTHONPATH=$PWD timeout 100 python3 -m bench.kernel_check --sections fp8rows \
  --out $OUT/r/fp8rows > $OUT/r/fp8rows.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 6"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 140"
ab() { (cd $1 && PYTHONPATH=$PWD timeout 150 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
ab _prev prev
ab . new
