#!/usr/bin/env bash
# Install the benchmark peers into .bench/ (ignored by git), each in its own environment:
#   .bench/perf/        perf_analyzer (Triton's load generator) + the libcudart.so.12 it links against
#   .bench/triton/      NVIDIA Triton Inference Server through nvidia-pytriton, on Python 3.12
#   .bench/ray/         Ray Serve (ray[serve] 2.60.0)
#   .bench/torchserve/  TorchServe 0.12.0 + torch-model-archiver (and a Java 17 runtime, from apt)
#
#   bash benchmarks/peers/setup.sh [triton|ray|torchserve|perf|all]...   # default all
#
# Every peer runs genserve's own ModelRunner (benchmarks/peers/peer_models.py), so genserve is
# installed into each peer environment (editable) WITH its dependencies: the serving code imports
# them (grpc_health via serving/convert.py, protobuf for the stubs, onnxruntime, ...). What each
# peer framework imports but does not declare is installed too (TorchServe's worker: torch, yaml).
#
# Idempotent: a peer is (re)installed only when its stamp (.bench/<peer>/.setup-stamp) differs
# from what this script would install (its pins and genserve's dependencies in pyproject.toml);
# otherwise it says so and is done in well under a second. A first run of all takes ~3 min.
#
# perf_analyzer: tritonclient stopped shipping it in its wheels after 2.60, and the binaries of
# 2.49-2.60 need glibc 2.38 (Debian 12 has 2.36), so the 2.48.0 manylinux wheel is pinned. It
# needs libb64 (Debian package) and libcudart.so.12 even on CPU (nvidia-cuda-runtime-cu12 wheel).
# pytriton needs Python >= 3.12 with LD_LIBRARY_PATH at that interpreter's lib/ (it embeds the
# tritonserver binary, which links libpython). Ray and TorchServe use Python 3.11 like genserve.
set -euo pipefail
WHAT=("${@:-all}")
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="$ROOT/.bench"
PERF_TRITONCLIENT="2.48.0"
RAY="ray[serve]==2.60.0"
TORCHSERVE="torchserve==0.12.0 torch-model-archiver==0.12.0"
# TorchServe's Python worker imports torch and yaml at start, whatever the handler: the CPU build
# of the torch genserve's [train] extra pins (where the index serves only CUDA builds, see README).
TORCHSERVE_WORKER="torch==2.13.0 pyyaml"
PY311="${PY311:-python3}"
PY312="${PY312:-$(pyenv prefix 3.12 2>/dev/null || true)}"

for peer in "${WHAT[@]}"; do
  case "$peer" in
    triton | ray | torchserve | perf | all) ;;
    *)
      echo "usage: $0 [triton|ray|torchserve|perf|all]..." >&2
      exit 2
      ;;
  esac
done
mkdir -p "$BENCH"

# A Debian package, with the package lists refreshed first when they do not know it (fresh machine).
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing $1 (apt)"
  $sudo apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$1" >/dev/null; }
}
# A Python >= 3.11 for the peers that run genserve on genserve's own interpreter version.
python311() {
  "$PY311" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
    { echo "$PY311 is not Python >= 3.11 (set PY311 to one)" >&2; exit 1; }
  "$PY311" -m venv "$1"
}
# What an environment was made from: its pins and genserve's runtime dependencies.
stamp_of() {
  { printf '%s\n' "$@"; sed -n '/^dependencies = \[/,/^\]/p' "$ROOT/pyproject.toml"; } | sha256sum | cut -d' ' -f1
}
ready() { [ -x "$BENCH/$1/bin/python" ] && [ "$(cat "$BENCH/$1/.setup-stamp" 2>/dev/null)" = "$2" ]; }
# genserve (editable, with its dependencies) into a peer environment, and a check that the peer
# imports what its server imports.
with_genserve() {
  "$BENCH/$1/bin/pip" install -q -e "$ROOT"
  "$BENCH/$1/bin/python" -c "import genserve.serving.runner, genserve.serving.convert" ||
    { echo "$1: genserve's serving code does not import in $BENCH/$1" >&2; exit 1; }
}

setup_perf() {
  ldconfig -p | grep -q libb64.so.0d || apt_install libb64-0d
  if [ ! -x "$BENCH/perf/bin/perf_analyzer" ]; then
    echo "installing perf_analyzer (tritonclient $PERF_TRITONCLIENT) into $BENCH/perf"
    python3 -m venv "$BENCH/perf"
    "$BENCH/perf/bin/pip" install -q --only-binary=:all: "tritonclient[grpc]==$PERF_TRITONCLIENT" nvidia-cuda-runtime-cu12
  fi
  echo "perf_analyzer ready in $BENCH/perf"
}

setup_triton() {
  local stamp
  stamp=$(stamp_of triton nvidia-pytriton onnxruntime)
  if ready triton "$stamp" && [ -f "$BENCH/triton/libdir" ]; then
    echo "triton ready in $BENCH/triton (unchanged)"
    return
  fi
  if [ -z "$PY312" ] && command -v python3.12 >/dev/null; then
    PY312="$(python3.12 -c 'import sys; print(sys.prefix)')"
  fi
  if [ -z "$PY312" ] || [ ! -x "$PY312/bin/python3.12" ]; then
    echo "no Python 3.12 found (set PY312 to its prefix, e.g. \$(pyenv prefix 3.12.1))" >&2
    exit 1
  fi
  echo "installing nvidia-pytriton into $BENCH/triton (Python from $PY312)"
  [ -x "$BENCH/triton/bin/python" ] || "$PY312/bin/python3.12" -m venv "$BENCH/triton"
  # pytriton first, then genserve: pytriton's tritonclient[grpc] pins protobuf < 7 and genserve's
  # stubs need >= 7.35, so pip reports that conflict once and leaves protobuf 7 (pytriton's server
  # side runs on it; the peer is checked to serve by benchmarks/tests/test_vs_peers.py).
  "$BENCH/triton/bin/python" -c "import pytriton.triton" 2>/dev/null ||
    "$BENCH/triton/bin/pip" install -q nvidia-pytriton onnxruntime
  with_genserve triton
  "$BENCH/triton/bin/python" -c "import pytriton.triton"
  echo "$PY312/lib" >"$BENCH/triton/libdir"
  echo "$stamp" >"$BENCH/triton/.setup-stamp"
  echo "triton ready in $BENCH/triton"
}

setup_ray() {
  local stamp
  stamp=$(stamp_of ray "$RAY")
  if ready ray "$stamp"; then
    echo "ray ready in $BENCH/ray (unchanged)"
    return
  fi
  echo "installing $RAY into $BENCH/ray"
  [ -x "$BENCH/ray/bin/python" ] || python311 "$BENCH/ray"
  "$BENCH/ray/bin/pip" install -q "$RAY"
  with_genserve ray
  "$BENCH/ray/bin/python" -c "from ray import serve; from ray.serve.config import gRPCOptions"
  echo "$stamp" >"$BENCH/ray/.setup-stamp"
  echo "ray ready in $BENCH/ray"
}

setup_torchserve() {
  local stamp
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  stamp=$(stamp_of torchserve "$TORCHSERVE" "$TORCHSERVE_WORKER")
  if ready torchserve "$stamp"; then
    echo "torchserve ready in $BENCH/torchserve (unchanged)"
    return
  fi
  echo "installing $TORCHSERVE into $BENCH/torchserve"
  [ -x "$BENCH/torchserve/bin/python" ] || python311 "$BENCH/torchserve"
  # shellcheck disable=SC2086 # the pins are words
  "$BENCH/torchserve/bin/pip" install -q $TORCHSERVE $TORCHSERVE_WORKER
  with_genserve torchserve
  "$BENCH/torchserve/bin/python" -c "import ts.model_service_worker" </dev/null
  echo "$stamp" >"$BENCH/torchserve/.setup-stamp"
  echo "torchserve ready in $BENCH/torchserve"
}

for peer in "${WHAT[@]}"; do
  case "$peer" in
    all)
      setup_perf
      setup_triton
      setup_ray
      setup_torchserve
      ;;
    *) "setup_$peer" ;;
  esac
done
