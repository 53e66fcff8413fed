# The two commands of the README:
#   make serve   set up .venv (first time) and start the server on the bundled models
#   make test    set up .venv (first time) and run the test suite
# Everything installs into .venv in the repository root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 50051
HOST ?= 127.0.0.1
BACKEND ?= onnxruntime
METRICS_PORT ?= 9090
# More `genserve serve` flags for `make serve`, e.g. SERVE_FLAGS='--drain-delay 5 --log-format json'.
SERVE_FLAGS ?=

.PHONY: serve test install native lint protos clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject; where the index serves only CUDA builds, install the CPU wheel first (README).
	# .[dev] = the base (the server and client, ONNX Runtime's CPU wheel) + training + test tools.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The native gRPC transport (serving/native, gRPC C++): built here when it can be (a compiler and
# libgrpc++-dev, which build.sh installs with apt-get when allowed); without it the server runs on
# grpcio and logs why, and the native transport's tests skip saying so (GENSERVE_REQUIRE_NATIVE=1, as CI
# sets it, makes both a failure: the default transport must be built there).
NATIVE := serving/native/.built
$(NATIVE): serving/native/frontend.cc serving/native/build.sh | $(STAMP)
	@if bash serving/native/build.sh $(BIN)/python; then touch $(NATIVE); \
	elif [ -n "$$GENSERVE_REQUIRE_NATIVE" ]; then \
		echo "native gRPC transport not built, and GENSERVE_REQUIRE_NATIVE is set: failing"; exit 1; \
	else echo "native gRPC transport not built: serving on grpcio (see serving/native/build.sh)"; fi

install: $(STAMP) $(NATIVE)

native: $(NATIVE)

serve: $(STAMP) $(NATIVE)
	$(BIN)/genserve serve --host $(HOST) --port $(PORT) --backend $(BACKEND) --metrics-port $(METRICS_PORT) $(SERVE_FLAGS)

test: $(STAMP) $(NATIVE)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

protos: $(STAMP)
	$(BIN)/python protos/generate.py

clean-venv:
	rm -rf $(VENV)
