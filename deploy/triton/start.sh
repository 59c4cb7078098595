#!/usr/bin/env bash
# Entry point of the GPU serving containers (docker-compose.yml `triton*` services, deploy/k8s/deployment.yaml).
#
# Expects: the repository at /repo (bind mount, or baked in by deploy/triton/Dockerfile), the HF checkpoint
# (tokenizer, generation_config) at /models/llm/checkpoint and the engines volume at /models/llm/engines.
# Assembles /models/llm from the repository's model, points its config.pbtxt at the engine
# (engine=$LLM_ENGINE, engine_dir=engines/$ENGINE_NAME/engine), then execs tritonserver on ports 8000/8001/8002.
#
# Environment: LLM_ENGINE (tensorrtllm | pytorch, default tensorrtllm), ENGINE_NAME (e.g. fp16-tp1),
# LLM_PARAMS (extra "key=value key=value" config.pbtxt parameters), LLM_INSTANCES (model instances, default 1;
# with LLM_ENGINE=pytorch they share one engine process per GPU, and 2 spreads Triton's execute calls, intake
# and response sends over two stubs: docs/performance.md), TRITON_ARGS (extra tritonserver flags).
set -euo pipefail

REPO=${REPO:-/repo}
MODELS=${MODELS:-/models}
ENGINE=${LLM_ENGINE:-tensorrtllm}
ENGINE_NAME=${ENGINE_NAME:-fp16-tp1}

# The Python backend stub ignores PYTHONPATH: make llmserve importable through a .pth file in the image's
# site-packages (model.py also falls back to the repository next to it, which /models/llm/1 is not).
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -w "$SITE" ]; then
    echo "$REPO" > "$SITE/llmserve-repo.pth"
fi

mkdir -p "$MODELS/llm"
rm -rf "$MODELS/llm/1"
cp -r "$REPO/model_repository/llm/1" "$MODELS/llm/1"
if [ "$ENGINE" = "tensorrtllm" ] && [ ! -f "$MODELS/llm/engines/$ENGINE_NAME/engine/build_manifest.json" ]; then
    echo "start.sh: no engine at $MODELS/llm/engines/$ENGINE_NAME/engine (run the engine-build service first)" >&2
    exit 1
fi
# shellcheck disable=SC2086  # LLM_PARAMS is a list of key=value words
python3 "$REPO/deploy/triton/set_params.py" "$REPO/model_repository/llm/config.pbtxt" "$MODELS/llm/config.pbtxt" \
    engine="$ENGINE" engine_dir="engines/$ENGINE_NAME/engine" checkpoint_dir=checkpoint device=cuda \
    ${LLM_PARAMS:-}
INSTANCES=${LLM_INSTANCES:-1}
if ! [[ "$INSTANCES" =~ ^[1-9][0-9]*$ ]]; then
    echo "start.sh: LLM_INSTANCES must be a positive integer, got '$INSTANCES'" >&2
    exit 1
fi
if [ "$INSTANCES" != 1 ] && [ "$ENGINE" != pytorch ]; then
    echo "start.sh: LLM_INSTANCES > 1 needs LLM_ENGINE=pytorch (a TensorRT-LLM instance holds an engine of its own)" >&2
    exit 1
fi
sed -i -E "s/^instance_group \[ \{ count: [0-9]+,/instance_group [ { count: $INSTANCES,/" "$MODELS/llm/config.pbtxt"

# Under `wrap`, SIGTERM (docker stop, a pod's deletion) drains the model before tritonserver stops: every
# request in flight gets its final response (llmserve/serving/drain.py). The preStop hook drains through the same
# control folder.
export LLMSERVE_CONTROL_DIR=${LLMSERVE_CONTROL_DIR:-/tmp/llmserve-control}
# shellcheck disable=SC2086
exec python3 -m llmserve.launch wrap --drain-seconds "${DRAIN_SECONDS:-15}" -- tritonserver --model-repository="$MODELS" \
    --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    --allow-metrics=true --allow-gpu-metrics=true --metrics-interval-ms=2000 \
    --exit-timeout-secs=30 ${TRITON_ARGS:-}
