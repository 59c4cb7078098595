#!/bin/bash
# Session 25, call 1 (about 10 minutes, the profile last and cut if time runs out; carry .carry/tokenizer; r.tgz
# saved after each part). 0) The GPU tests of the kernels touched (linear incl. `gate_out`, the folds and
# `wmm_fp8`, PDL prologue, fresh prompts' attention), no -x. 1) fp8 linears at 2-32 rows, kernels only
# (`--sections fp8rows`). 2) The engine's decode steps, Llama-3.1-8B shape (`--sections switches`): silu(gate) * up
# in gate_up's epilogue (GATE_OUT) and, at one row, the residual add + RMSNorm folded into the GEMVs around them
# (FOLD_NORM) and the rotary + cache write into qkv's (ROPE_IN_GEMV): all on, all off, then added one at a time,
# all on again; fp8 (also e4m3 rows from 2 rows: SKINNY_MAX_M.fp8=1) then bf16. 3) A batch-1 step kernel by kernel
# (bf16, fp8).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
T="tests/test_kernels.py tests/test_kernels_attention.py tests/test_kernels_model.py tests/test_kernels_fp8_mm.py"
K="pdl or gemv or wmm or quant or fp8 or fast_path or varlen or fresh or mixed or rope or gate_out or folds or rotates"
timeout 120 python3 -m pytest -q -rf $T -k "$K" > $OUT/r/tests.log 2>&1
save
MM_SHAPE=llama3.1-8b MM_MS=2,8 timeout 80 python3 -m bench.kernel_check --sections fp8rows --out $OUT/r/fp8rows \
  > $OUT/r/fp8rows.log 2>&1
save
ON="GATE_OUT=1,FOLD_NORM=1,ROPE_IN_GEMV=1"
C="$ON;GATE_OUT=0,FOLD_NORM=0,ROPE_IN_GEMV=0;GATE_OUT=1,FOLD_NORM=0,ROPE_IN_GEMV=0;GATE_OUT=1,FOLD_NORM=1,ROPE_IN_GEMV=0;$ON"
SWITCH_MODE=fp8 SWITCH_BATCHES=1,2,8,16,32 SWITCH_CASES="$C;$ON,SKINNY_MAX_M.fp8=1" \
  timeout 170 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-fp8 > $OUT/r/sw-fp8.log 2>&1
save
SWITCH_MODE=bf16 SWITCH_BATCHES=1,8,16 SWITCH_CASES="$C" \
  timeout 140 python3 -m bench.kernel_check --sections switches --out $OUT/r/sw-bf16 > $OUT/r/sw-bf16.log 2>&1
save
PROFILE_SHAPE=llama3.1-8b PROFILE_CASES=bf16:1,fp8:1 timeout 60 python3 -m bench.kernel_check --sections profile \
  --out $OUT/r/prof > $OUT/r/prof.log 2>&1
save
