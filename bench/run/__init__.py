"""The benchmark: our engine directly, the same engine behind the real Triton server, HF transformers, and the
weight-read floor, on one GPU in one run, on random weights of one model shape (--shape: the config.json values
of Llama-3.1-8B, Qwen2.5-7B, Mistral-7B-v0.3 or Llama-2-7B, the default, kept for history).

    python -m bench.run                                                 # everything (about 6-7 minutes on an H200)
    python -m bench.run --phases floor,engine --quick --out /tmp/b     # a smoke run
    python -m bench.run --shape llama3.1-8b --phases floor,engine_fp8 --plan trtllm \
        --serving max_batch_size=1024                                   # TensorRT-LLM's workloads, up to 2048 streams
    python -m bench.run --shape llama3.1-8b --phases load               # start from a 16 GB checkpoint on disk
    python -m bench.run --shape llama3.1-8b --phases engine,engine_fp8 --plan long   # 8k/16k/32k-token prompts

Each phase runs in its own process (GPU memory is freed between them) and writes a JSON file; the parent
merges them into results.json, results.md and results.png under --out. Weights are made on the GPU (no 13 GB
checkpoint on disk) with the shape's vocabulary for the engine-direct, HF and floor phases; the Triton phase
needs a tokenizer, so it uses SmolLM2's (vocab 49152) with the shape's other dimensions and measures
engine-direct again on that same model. Generation ignores EOS, so every request produces exactly the output
length (with `--spread F`, its own length within +-F of it, seeded: requests then finish and are replaced at
different steps, as in real traffic, rather than in waves). A shape whose context is longer than the workloads
need is served with max_model_len 4096 (the longest workload, 2048 + 2048), so the CUDA graphs and the KV budget
are those of the workloads.
`--plan trtllm` runs TensorRT-LLM's five workloads (128/128, 128/2048, 2048/128, 1000/1000, 2048/2048) at up to
1,024 streams (2,048 for 128/128) for the engine phases (not the Triton twin), all of a point's requests
submitted at once; the report gives each workload's best throughput beside TensorRT-LLM's published figure.
"""
