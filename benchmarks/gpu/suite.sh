#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu/suite.py): every GPU target of the cuda backend in one run.
#   bash benchmarks/gpu/suite.sh OUT_DIR         # on the GPU machine, from the repository root;
#                                                # installs .whl/ first (benchmarks/gpu/prepare.sh made it)
#   bash benchmarks/gpu/suite.sh --dry OUT_DIR   # here, on the CPU: tiny sizes, no CUDA graphs
# Writes OUT_DIR/suite.json, suite.md and plots; exits non-zero if a part failed to run
# (a missed target is a result, not a failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
dry=()
if [ "${1:-}" = "--dry" ]; then dry=(--dry); shift; fi
out="${1:?usage: bash benchmarks/gpu/suite.sh [--dry] OUT_DIR}"
shift
if [ ${#dry[@]} -eq 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
    # shellcheck source=benchmarks/gpu/install.sh
    source benchmarks/gpu/install.sh
fi
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ ${#dry[@]} -gt 0 ] && python=.venv/bin/python
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu/suite.py "${dry[@]}" --out "$out" "$@"
