# Two commands matter: `make run` (demo against the built-in emulated workspace) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit venv tools clean bench soak

# Test tools from Debian and npm (curl, prometheus/promtool, systemd-analyze, the pinned kustomize);
# needs root for apt-get the first time, does nothing once they are there.
TOOLS_STAMP := scripts/deploy-tools/node_modules/.installed

$(BIN)/serving-sidecar: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/serving-sidecar

$(TOOLS_STAMP): .ci/install-system-packages scripts/install-deploy-tools scripts/deploy-tools/package-lock.json
	bash .ci/install-system-packages
	touch $@

tools: $(TOOLS_STAMP)

run: venv
	$(BIN)/serving-sidecar demo

lint: venv
	$(BIN)/ruff check proxy tests scripts
	$(BIN)/ruff format --check proxy tests scripts
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

test: tools lint typecheck
	$(BIN)/pytest -q

# Not part of `make test`: timings depend on the machine. SOAK_ARGS / BENCH_ARGS pass options through.
soak: venv
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

# bench: wrk, nginx and python3.11 from Debian (scripts/install-bench-tools; apt-get the first time, as
# root). The proxies run on BENCH_PY in a venv of their own: Debian's python3.11 is an optimized build
# (static, PGO and LTO), as the Docker image's python:3.11 is (--enable-optimizations --with-lto); a
# Python built without those costs the sidecar ~10% more CPU, so the dev venv's own interpreter is
# measured beside it as sidecar-devpython.
BENCH_PY ?= /usr/bin/python3.11
BENCH_VENV := .venv-bench

$(BENCH_VENV)/bin/serving-sidecar: pyproject.toml
	$(BENCH_PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e .
	touch $@

bench: venv
	BENCH_PY=$(BENCH_PY) bash scripts/install-bench-tools
	$(MAKE) $(BENCH_VENV)/bin/serving-sidecar
	$(BENCH_VENV)/bin/python scripts/bench.py --sidecar-python devpython=$(BIN)/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .pytest_cache .ruff_cache
