#!/usr/bin/env bash
# Build the compiled-front-end probe (see probe.py): Debian's gRPC C++ and protoc, and C++ code
# generated from the KServe v2 protocol's descriptors that tritonclient ships.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
build="$root/.bench/cxx_frontend"
mkdir -p "$build"
if ! command -v grpc_cpp_plugin >/dev/null || ! pkg-config --exists grpc++; then
    apt-get install -y -q libgrpc++-dev protobuf-compiler-grpc pkg-config
fi
"$root/.venv/bin/python" - "$build/kserve.desc" <<'PY'
import sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2

files, seen = descriptor_pb2.FileDescriptorSet(), set()
def add(fd):
    if fd.name not in seen:
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        fd.CopyToProto(files.file.add())
add(service_pb2.DESCRIPTOR)
open(sys.argv[1], "wb").write(files.SerializeToString())
PY
cd "$build"
protoc --descriptor_set_in=kserve.desc --cpp_out=. --grpc_out=. \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" model_config.proto grpc_service.proto
g++ -O2 -std=c++17 -I. "$here/front.cc" grpc_service.pb.cc grpc_service.grpc.pb.cc model_config.pb.cc \
    -o front $(pkg-config --cflags --libs grpc++ protobuf)
echo "built $build/front"
