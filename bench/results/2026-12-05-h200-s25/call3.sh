#!/bin/bash
# Session 25, call 3 (about 5 minutes; carry .carry/tokenizer): the one-row GEMV's tile sweep on Llama-3.1-8B's
# matrices as the model now launches them (gate_up with the gate in its epilogue, down_proj on plain rows: its
# tiles were chosen for the gated load), bf16 and fp8; then the read floor of the same call.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
MM_SHAPE=llama3.1-8b GEMV1_KINDS=bf16,fp8 timeout 200 python3 -m bench.kernel_check --sections gemv1 \
  --out $OUT/r/gemv1 > $OUT/r/gemv1.log 2>&1
save
timeout 120 python3 -m bench.run --shape llama3.1-8b --phases floor --out $OUT/r/floor > $OUT/r/floor.log 2>&1
save
