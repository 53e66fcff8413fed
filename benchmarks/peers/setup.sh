#!/usr/bin/env bash
# Install the benchmark peers into .bench/ (ignored by git), idempotently:
#   .bench/perf/    perf_analyzer (Triton's load generator) + libcudart.so.12 it links against
#   .bench/triton/  NVIDIA Triton Inference Server through nvidia-pytriton, on Python 3.12,
#                   with genserve installed without dependencies (the peer's model code)
#
#   bash benchmarks/peers/setup.sh        # both; ~3 min the first time, then instant
#   bash benchmarks/peers/setup.sh perf   # perf_analyzer only (~30 s; .ci/run does this for its test)
#
# perf_analyzer: tritonclient stopped shipping it in its wheels after 2.60, and the binaries of
# 2.49-2.60 need glibc 2.38 (Debian 12 has 2.36), so the 2.48.0 manylinux wheel is pinned. It
# needs libb64 (Debian package) and libcudart.so.12 even on CPU (nvidia-cuda-runtime-cu12 wheel).
# pytriton needs Python >= 3.12 with LD_LIBRARY_PATH at that interpreter's lib/ (it embeds the
# tritonserver binary, which links libpython).
set -euo pipefail
WHAT="${1:-all}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="$ROOT/.bench"
PERF_TRITONCLIENT="2.48.0"
PY312="${PY312:-$(pyenv prefix 3.12 2>/dev/null || true)}"
mkdir -p "$BENCH"

if ! ldconfig -p | grep -q libb64.so.0d; then
  echo "installing libb64-0d (apt)"
  apt-get install -y -qq libb64-0d >/dev/null || sudo apt-get install -y -qq libb64-0d >/dev/null
fi

if [ ! -x "$BENCH/perf/bin/perf_analyzer" ]; then
  echo "installing perf_analyzer (tritonclient $PERF_TRITONCLIENT) into $BENCH/perf"
  python3 -m venv "$BENCH/perf"
  "$BENCH/perf/bin/pip" install -q --only-binary=:all: "tritonclient[grpc]==$PERF_TRITONCLIENT" nvidia-cuda-runtime-cu12
fi

if [ "$WHAT" = perf ]; then
  echo "perf_analyzer ready in $BENCH/perf"
  exit 0
fi

if [ ! -x "$BENCH/triton/bin/python" ] || ! "$BENCH/triton/bin/python" -c "import pytriton" 2>/dev/null; then
  if [ -z "$PY312" ] || [ ! -x "$PY312/bin/python3.12" ]; then
    echo "no Python 3.12 found (set PY312 to its prefix, e.g. \$(pyenv prefix 3.12.1))" >&2
    exit 1
  fi
  echo "installing nvidia-pytriton into $BENCH/triton (Python from $PY312)"
  "$PY312/bin/python3.12" -m venv "$BENCH/triton"
  "$BENCH/triton/bin/pip" install -q nvidia-pytriton onnxruntime numpy pillow prometheus-client
  echo "$PY312/lib" > "$BENCH/triton/libdir"
fi
# genserve itself, without its dependencies (no torch, no grpc): the peer runs genserve's own
# ModelRunner inside Triton, so both servers do the same model work per image.
if ! "$BENCH/triton/bin/python" -c "import genserve.serving.runner" 2>/dev/null; then
  "$BENCH/triton/bin/pip" install -q prometheus-client && "$BENCH/triton/bin/pip" install -q --no-deps -e "$ROOT"
fi
echo "peers ready in $BENCH"
