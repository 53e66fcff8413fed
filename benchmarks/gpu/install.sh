# shellcheck shell=bash
# On the GPU machine (no network), from the repository root: install what benchmarks/gpu/prepare.sh
# put in .whl/ into $GENSERVE_SITE (default /tmp/site) and set the environment the suite needs.
#   source benchmarks/gpu/install.sh            # sets PYTHONPATH, PYTHONSAFEPATH and PATH here
#   eval "$(bash benchmarks/gpu/install.sh)"    # the same; run as a script it prints the exports
# Progress goes to stderr. Environment: PYTHON (default python3: the image's CPython 3.12 with torch),
# GENSERVE_SITE, GENSERVE_FROM_CHECKOUT=0 (keep the genserve wheel's code instead of this checkout's).
#
# What it does:
#  1. installs the wheels with pip into $GENSERVE_SITE, emptied first (without pip, it unpacks them
#     itself); ml_dtypes and python-rapidjson only when the image lacks them (onnx needs ml_dtypes,
#     so the image's own stays in use);
#  2. replaces genserve's modules from the wheel with this checkout's (the layout of pyproject's
#     [tool.setuptools] packages and package-dir), so edits made after prepare.sh built the wheel
#     run; it says how many files differed;
#  3. unpacks the native gRPC transport (built for CPython 3.12, with its libraries in lib/ and an
#     RPATH of $ORIGIN/lib: no LD_LIBRARY_PATH needed) into genserve/serving/native/;
#  4. links the genserve console script next to the interpreter, where tests/integration and
#     benchmarks/serverproc.py look for it (Path(sys.executable).parent / "genserve");
#  5. exports PYTHONPATH=$GENSERVE_SITE:<repository root> (genserve from the site, benchmarks and
#     tests from the checkout), PYTHONSAFEPATH=1 (else `python -m pytest` puts the repository root
#     first on sys.path, and its genserve/ folder, which lacks the serving, training and export
#     subpackages, hides the installed genserve) and PATH=$GENSERVE_SITE/bin:$PATH;
#  6. checks that the modules import (genserve from the site, grpc, protobuf, tritonclient, mlxtend,
#     the native transport; diffusers' DDPMScheduler as a warning only).

_genserve_install() {
    local root site py here wheels=() w name bindir pyexe rc=0
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    root="$(cd "$here/../.." && pwd)"
    site="${GENSERVE_SITE:-/tmp/site}"
    py="${PYTHON:-python3}"
    _genserve_log() { printf '[install] %s\n' "$*" >&2; }

    if ! ls "$root"/.whl/*.whl >/dev/null 2>&1; then
        _genserve_log "error: no wheels in $root/.whl (run benchmarks/gpu/prepare.sh on a networked machine)"
        return 1
    fi
    pyexe="$("$py" -c 'import sys; print(sys.executable)' 2>/dev/null)" || { _genserve_log "error: no $py"; return 1; }
    if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        _genserve_log "error: $pyexe is Python $("$py" -c 'import platform; print(platform.python_version())'), the wheels are cp312"
        return 1
    fi
    case "$site" in /|"") _genserve_log "error: GENSERVE_SITE=$site"; return 1 ;; esac

    # 1. The wheels. Two only when the image lacks the module (checked without our site).
    for w in "$root"/.whl/*.whl; do
        name="$(basename "$w")"
        case "$name" in
            ml_dtypes-*) (cd / && env -u PYTHONPATH "$py" -c 'import ml_dtypes' 2>/dev/null) \
                && { _genserve_log "image has ml_dtypes: not installing $name"; continue; } ;;
            python_rapidjson-*) (cd / && env -u PYTHONPATH "$py" -c 'import rapidjson' 2>/dev/null) \
                && { _genserve_log "image has rapidjson: not installing $name"; continue; } ;;
        esac
        wheels+=("$w")
    done
    rm -rf "$site"
    mkdir -p "$site"
    _genserve_log "installing ${#wheels[@]} wheels into $site with $pyexe"
    if "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --disable-pip-version-check --target "$site" "${wheels[@]}" || { _genserve_log "error: pip install failed"; return 1; }
    else
        _genserve_log "no pip in $pyexe: unpacking the wheels"
        "$py" - "$site" "${wheels[@]}" <<'EOF' || { _genserve_log "error: unpacking the wheels failed"; return 1; }
import configparser, os, sys, zipfile

site, wheels = sys.argv[1], sys.argv[2:]
os.makedirs(os.path.join(site, "bin"), exist_ok=True)
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        for name in zf.namelist():
            if name.endswith(".dist-info/entry_points.txt"):
                entry_points = configparser.ConfigParser(delimiters=("=",))
                entry_points.optionxform = str
                entry_points.read_string(zf.read(name).decode())
                if entry_points.has_section("console_scripts"):
                    for script, target in entry_points.items("console_scripts"):
                        module, _, func = target.strip().partition(":")
                        path = os.path.join(site, "bin", script)
                        with open(path, "w") as f:
                            f.write(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\n"
                                    f"sys.exit({func}())\n")
                        os.chmod(path, 0o755)
EOF
    fi

    # 2. genserve's modules from this checkout.
    if [ "${GENSERVE_FROM_CHECKOUT:-1}" != 0 ]; then
        "$py" - "$root" "$site" <<'EOF' || { _genserve_log "error: copying genserve from the checkout failed"; return 1; }
import filecmp, shutil, sys, tomllib
from pathlib import Path

root, site = Path(sys.argv[1]), Path(sys.argv[2])
config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
package_dir = config.get("package-dir", {})


def source(package: str) -> Path:  # setuptools' package-dir lookup: the longest mapped prefix
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in package_dir:
            return root / package_dir[".".join(parts[:i])] / Path(*parts[i:])
    return root / package_dir.get("", "") / Path(*parts)


changed = []
for package in config["packages"]:
    src, dst = source(package), site / Path(*package.split("."))
    if not src.is_dir():
        print(f"[install] warning: {package}: no {src}", file=sys.stderr)
        continue
    dst.mkdir(parents=True, exist_ok=True)
    new = {p.name: p for p in src.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    for old in dst.iterdir():
        if old.is_file() and old.suffix in (".py", ".pyi") and old.name not in new:
            old.unlink()
            changed.append(f"-{package}.{old.name}")
    for name, path in new.items():
        if not (dst / name).exists() or not filecmp.cmp(path, dst / name, shallow=False):
            changed.append(f"{package}.{name}")
            shutil.copy2(path, dst / name)
what = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
print(f"[install] genserve from the checkout: {len(changed)} files differ from the wheel"
      + (f" ({what})" if changed else ""), file=sys.stderr)
EOF
    fi

    # 3. The native transport.
    if [ -f "$root/.whl/native/frontend-cp312.tar.xz" ]; then
        "$py" - "$root/.whl/native/frontend-cp312.tar.xz" "$site/genserve/serving/native" <<'EOF' || { _genserve_log "error: unpacking the native transport failed"; return 1; }
import sys, tarfile

with tarfile.open(sys.argv[1]) as tar:
    tar.extractall(sys.argv[2], filter="data")
EOF
        _genserve_log "native transport unpacked into $site/genserve/serving/native"
    else
        _genserve_log "no native transport in .whl/native: the server runs on grpcio"
    fi

    # 4. The console script, where the suite looks for it.
    bindir="$(dirname "$pyexe")"
    if [ -f "$site/bin/genserve" ]; then
        if [ -w "$bindir" ]; then
            ln -sf "$site/bin/genserve" "$bindir/genserve"
            _genserve_log "linked $bindir/genserve -> $site/bin/genserve"
        else
            _genserve_log "warning: $bindir is not writable: the suite's Path(sys.executable).parent / 'genserve' is missing"
        fi
    fi

    # 5. The environment.
    case ":${PYTHONPATH:-}:" in
        *":$site:$root:"*) ;;
        *) export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    export PYTHONSAFEPATH=1
    case ":$PATH:" in *":$site/bin:"*) ;; *) export PATH="$site/bin:$PATH" ;; esac

    # 6. Checks, from the repository root as the suite runs.
    (cd "$root" && "$py" - "$site" <<'EOF') || rc=1
import sys
from pathlib import Path

site = Path(sys.argv[1]).resolve()
import genserve, genserve.serving, google.protobuf, grpc, grpc_health.v1.health, grpc_reflection.v1alpha.reflection
import mlxtend.data, tritonclient.grpc
from genserve.serving import native

for module in (genserve, genserve.serving, grpc, google.protobuf):
    if not Path(module.__file__).resolve().is_relative_to(site):
        sys.exit(f"[install] error: {module.__name__} imports from {module.__file__}, not {site}")
print(f"[install] imports: grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}, genserve from {site},",
      f"native transport: {'gRPC C++ ' + native.grpc_version() if native.available() else native.unavailable_reason()}",
      file=sys.stderr)
try:
    import diffusers
    from diffusers import DDPMScheduler  # imports torch; without it, a placeholder that raises

    DDPMScheduler(num_train_timesteps=10)
    print(f"[install] diffusers {diffusers.__version__}: DDPMScheduler works", file=sys.stderr)
except Exception as exc:  # only the sampler benchmarks need it (benchmarks/sampler.py, suite part c)
    print(f"[install] warning: diffusers' DDPMScheduler does not import: {type(exc).__name__}: {exc}", file=sys.stderr)
EOF
    if [ "$rc" = 0 ]; then _genserve_log "ready: PYTHONPATH=$PYTHONPATH PYTHONSAFEPATH=1"
    else _genserve_log "error: the import check failed"; fi
    return "$rc"
}

if (return 0 2>/dev/null); then  # sourced: set the environment of the calling shell
    _genserve_install
else  # run: print the exports for eval
    set -u
    _genserve_install || exit 1
    printf 'export PYTHONPATH=%q\nexport PYTHONSAFEPATH=1\nexport PATH=%q\n' "$PYTHONPATH" "$PATH"
fi
