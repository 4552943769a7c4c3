# The two front-door commands are `make demo` and `make test`; both run `setup` first and
# work from a fresh clone on a fresh Debian 12 machine (root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup apt venv go-tools images demo lint test test-unit test-integration bench wheel clean

help:
	@echo "make demo   - run a pod network namespace through the CNI chain with istio-cni, show redirected traffic"
	@echo "make test   - install everything needed, then run the whole test suite"
	@echo "make bench  - run the benchmarks and check the latency budgets"
	@echo "make wheel  - build, auditwheel-repair and test the x86_64 and aarch64 (cross + qemu-user) wheels"

setup: apt venv go-tools

apt:
	@tools/setup-apt.sh

# PYTHONDONTWRITEBYTECODE may be set in the environment; byte-compile explicitly so the
# plugin's per-exec start-up does not recompile every module (the bundle ships .pyc too).
venv: $(STAMP)
	@$(PY) -m compileall -q src installer >/dev/null

# Build deps are installed into the venv and the package built without isolation, so a
# rebuild after editing the .pyx / cffi script takes seconds rather than a minute.
$(STAMP): pyproject.toml setup.py src/istio_cni/_fastpath.pyx src/istio_cni/_tlsget.h src/istio_cni/_nf.cffi.py $(wildcard src/front/*) src/istio_cni/_nft.cffi.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip "setuptools>=77" wheel "Cython>=3.0" "cffi>=1.16"
	$(PIP) install -q --disable-pip-version-check --no-build-isolation -e '.[test]'
	$(PY) -c "import istio_cni._fastpath, istio_cni._nf, istio_cni._nft"
	@touch $@

go-tools:
	@tools/go-tools.sh

# The node tier's images (tests/node): debootstrap base, installer/Dockerfile, pause, workload.
# Reused while their inputs hash the same; a failed build makes the node tests fail naming it.
images: apt
	@python3 tools/images/build.py

demo: setup
	$(PY) tools/demo.py

# The Go peers (CPU-bound) and the node tier's images (mostly downloads and apt/pip inside the
# build) are independent: on a cold machine building them side by side saves minutes; warm, both
# are cache hits. The lint gate runs first: a lint slip fails in a second, not after the builds.
test: apt venv
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory -j2 go-tools images
	$(PY) -m pytest tests $(PYTEST_ARGS)

# Rules in pyproject.toml ([tool.ruff], [tool.mypy]); ruff and mypy are pinned in the test extra.
# stubtest checks the compiled modules' .pyi stubs against the built modules (MYPYPATH=src:
# the editable install's import hook is invisible to it).
lint: venv
	$(PY) -m ruff check src installer tools tests benchmarks
	$(PY) -m ruff format --check src installer
	$(PY) -m mypy
	MYPYPATH=src $(PY) -m mypy.stubtest --allowlist typings/stubtest-allowlist.txt \
		istio_cni._fastpath istio_cni._nf istio_cni._nft

# Tiers (docs/testing.md): unit needs neither root nor network; integration needs root.
test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# The run's JSON lands in .benchmarks/latest.json; check_budgets.py prints the tables and
# fails the target when a budget is missed or not measured (it runs even if a benchmark failed).
BENCH_JSON := .benchmarks/latest.json
bench: setup
	@mkdir -p $(dir $(BENCH_JSON)) && rm -f $(BENCH_JSON)
	@rc=0; $(PY) -m pytest benchmarks -p no:cacheprovider --benchmark-json=$(BENCH_JSON) $(PYTEST_ARGS) || rc=1; \
	$(PY) benchmarks/check_budgets.py $(BENCH_JSON) --markdown $(BENCH_JSON:.json=.md) || rc=1; \
	exit $$rc

# Both wheels: x86_64 (build, repair, clean venv, unit tier) and aarch64 (cross-built against a
# cached arm64 Debian sysroot, tested under qemu-user; no binfmt). Slow, so not part of `test`
# (docs/wheels.md has the times).
wheel: apt venv
	@tools/wheel-check.sh

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/istio_cni/*.so src/istio_cni/_fastpath.c src/istio_cni/_nf.c src/istio_cni/_nft.c
