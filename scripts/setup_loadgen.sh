#!/usr/bin/env bash
# Create the two load-generator environments, each apart from the main venv:
#
#   .venv-loadgen/pa     tritonclient==2.51.0 (its wheel ships bin/perf_analyzer, which runs on glibc 2.36;
#                        2.52+ and the PyPI perf-analyzer wheel need glibc 2.38), numpy<2, plus lib/ holding
#                        libb64.so.0d and libcudart.so.12 as symlinks into the main venv's nvidia_pytriton.libs/.
#   .venv-loadgen/genai  genai-perf==0.0.16 (pins numpy 2.x, so it cannot share an environment with tritonclient
#                        2.51 or with the server's numpy<2).
#   .venv-loadgen/aiperf aiperf (optional: only with WITH_AIPERF=1).
#
# Usage: scripts/setup_loadgen.sh [MAIN_VENV]   (MAIN_VENV defaults to .venv; it must hold nvidia-pytriton)
# Environment: LOADGEN_DIR (default .venv-loadgen), PYTHON (default python3), WITH_AIPERF=1.
# Idempotent: an environment whose packages are already in place is left alone.
set -euo pipefail

cd "$(dirname "$0")/.."
MAIN_VENV="${1:-.venv}"
LOADGEN_DIR="${LOADGEN_DIR:-.venv-loadgen}"
PYTHON="${PYTHON:-python3}"
PA_VERSION="2.51.0"
GENAI_VERSION="0.0.16"
AIPERF_VERSION="${AIPERF_VERSION:-0.13.0}"

log() { echo "[setup_loadgen] $*" >&2; }

make_venv() {  # make_venv DIR
    if [ ! -x "$1/bin/python" ]; then
        log "creating venv $1"
        "$PYTHON" -m venv "$1"
        "$1/bin/python" -m pip install -q --upgrade pip
    fi
}

has_version() {  # has_version VENV DIST VERSION
    [ "$("$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null)" = "$3" ]
}

# ---- perf_analyzer ------------------------------------------------------------------------------------------------
PA="$LOADGEN_DIR/pa"
make_venv "$PA"
if ! has_version "$PA" tritonclient "$PA_VERSION" || [ ! -x "$PA/bin/perf_analyzer" ]; then
    log "installing tritonclient==$PA_VERSION (perf_analyzer) into $PA"
    # Only the grpc/http extras: [all] drags in a placeholder perf-analyzer wheel without a binary.
    "$PA/bin/python" -m pip install -q "tritonclient[grpc,http]==$PA_VERSION" "numpy<2"
fi

LIBS_DIR=""
if [ -x "$MAIN_VENV/bin/python" ]; then
    SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if [ -d "$SITE/nvidia_pytriton.libs" ]; then
        LIBS_DIR="$(cd "$SITE/nvidia_pytriton.libs" && pwd)"
    fi
fi
if [ -z "$LIBS_DIR" ]; then
    log "ERROR: $MAIN_VENV has no site-packages/nvidia_pytriton.libs (pip install nvidia-pytriton==0.7.0 there)"
    exit 1
fi
mkdir -p "$PA/lib"
link_lib() {  # link_lib PLAIN_NAME GLOB
    local target
    target="$(find "$LIBS_DIR" -maxdepth 1 -name "$2" | sort | head -n1)"
    if [ -z "$target" ]; then
        log "ERROR: no $2 in $LIBS_DIR"
        exit 1
    fi
    ln -sfn "$target" "$PA/lib/$1"
}
link_lib libb64.so.0d 'libb64-*.so.0d'
link_lib libcudart.so.12 'libcudart-*.so.12*'

# ---- genai-perf ---------------------------------------------------------------------------------------------------
GENAI="$LOADGEN_DIR/genai"
make_venv "$GENAI"
if ! has_version "$GENAI" genai-perf "$GENAI_VERSION"; then
    log "installing genai-perf==$GENAI_VERSION into $GENAI"
    "$GENAI/bin/python" -m pip install -q "genai-perf==$GENAI_VERSION"
fi
# genai-perf runs perf_analyzer underneath: give its environment the binary from tritonclient 2.51.
ln -sfn "$(cd "$PA/bin" && pwd)/perf_analyzer" "$GENAI/bin/perf_analyzer"

# ---- aiperf (optional) --------------------------------------------------------------------------------------------
if [ "${WITH_AIPERF:-0}" = "1" ]; then
    AIP="$LOADGEN_DIR/aiperf"
    make_venv "$AIP"
    if ! has_version "$AIP" aiperf "$AIPERF_VERSION"; then
        log "installing aiperf==$AIPERF_VERSION into $AIP"
        "$AIP/bin/python" -m pip install -q "aiperf==$AIPERF_VERSION"
    fi
    echo "aiperf=$(cd "$AIP/bin" && pwd)/aiperf"
fi

# ---- smoke check and paths ----------------------------------------------------------------------------------------
PA_LIB="$(cd "$PA/lib" && pwd)"
LD_LIBRARY_PATH="$PA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA/bin/perf_analyzer" --version >/dev/null 2>&1 \
    || LD_LIBRARY_PATH="$PA_LIB" "$PA/bin/perf_analyzer" --help >/dev/null 2>&1 \
    || log "WARNING: perf_analyzer did not start (check LD_LIBRARY_PATH=$PA_LIB)"
"$GENAI/bin/genai-perf" --version >/dev/null 2>&1 || log "WARNING: genai-perf --version failed"

echo "perf_analyzer=$(cd "$PA/bin" && pwd)/perf_analyzer"
echo "perf_analyzer_ld_library_path=$PA_LIB"
echo "genai_perf=$(cd "$GENAI/bin" && pwd)/genai-perf"
