#!/bin/bash
# Session 26, call 2 (about 8 minutes; carry .carry/tokenizer), after call 1 (8ba3916 -> 7102b7c cost 2048/128 3.3%):
# a mixed step's chunk after its cached prefix launched on a side stream beside the fresh prompts' launch
# (varlen.OVERLAP_LAUNCHES), and fresh prompts' K/V through TMA (FRESH_LOADS 2: call 1b timed it 10% faster). The
# GPU tests of the fresh-prompt paths, `kernel_check --sections varlen_chunk` (the
# chunk's launch after the fresh one, beside it, and every block over the cache), then 2048/128 at 256 streams:
# _t2 (8ba3916), this tree, _t2. Before the call: `bash bench/results/2026-12-05-next-calls/tree.sh _t2 8ba3916`.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -rf tests/test_kernels_attention.py tests/test_kernels_model.py \
  -k "fresh or varlen or mixed" > $OUT/r/tests.log 2>&1
PYTHONPATH=$PWD timeout 90 python3 -m bench.kernel_check --sections varlen_chunk --out $OUT/r/chunk > $OUT/r/chunk.log 2>&1
save
S="--shape llama3.1-8b --plan trtllm --serving max_batch_size=1024 --phases engine_fp8_kv8_t8192 --waves 4"
S="$S --workloads 2048x128 --concurrency 256 --phase-timeout 120"
start=$SECONDS
ab() { (cd $1 && PYTHONPATH=$PWD timeout 140 python3 -m bench.run $S --out $OUT/r/ab-$2 > $OUT/r/ab-$2.log 2>&1); save; }
for run in "_t2 t2" ". new" "_t2 t2b" ". new2"; do
  [ $((SECONDS - start)) -lt 330 ] || break
  ab $run
done
rm -rf $OUT/r
