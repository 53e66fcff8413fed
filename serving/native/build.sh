#!/usr/bin/env bash
# Build genserve's compiled gRPC transport (serving/native/frontend.cc) next to its source, as the
# extension module genserve.serving.native._frontend. Needs a C++17 compiler and gRPC C++ (Debian:
# libgrpc++-dev, installed with apt-get if missing and allowed); the server runs without it, on
# grpcio, and says so (`genserve serve --frontend`).
#   bash serving/native/build.sh [PYTHON]      # PYTHON: the virtualenv's interpreter (default .venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${1:-$root/.venv/bin/python}"
if ! pkg-config --exists grpc++ 2>/dev/null; then
    echo "gRPC C++ not found; installing libgrpc++-dev (apt)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq libgrpc++-dev pkg-config >/dev/null
    else sudo -n apt-get install -y -qq libgrpc++-dev pkg-config >/dev/null; fi
fi
"$python" -c "import pybind11" 2>/dev/null || "$python" -m pip install --quiet "pybind11>=2.12"
suffix="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
includes="$("$python" -c 'import pybind11, sysconfig; print("-I" + pybind11.get_include(), "-I" + sysconfig.get_paths()["include"])')"
out="$here/_frontend$suffix"
echo "compiling $out (10 s here)"
# shellcheck disable=SC2046,SC2086
g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden $includes "$here/frontend.cc" -o "$out.tmp" \
    $(pkg-config --cflags --libs grpc++)
mv "$out.tmp" "$out"
echo "built $out (gRPC C++ $(pkg-config --modversion grpc++))"
