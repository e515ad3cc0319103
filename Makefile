# eiger_server — build, test, demo, benchmark.
# Everything runs from a project virtual environment (.venv) that the
# targets create and fill on first use, so a fresh machine needs only Python.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv lint test test-fast demo bench soak clean help
all: venv

help:
	@echo "make demo        start the fake DCU and eiger_server, run a short acquisition"
	@echo "make test        lint, then the whole test suite (unit, integration, system)"
	@echo "make test-fast   unit and integration tests only (no processes)"
	@echo "make lint        ruff and mypy (configured in pyproject.toml)"
	@echo "make bench       stream-path and wire benchmarks (write BENCHMARKS.md)"
	@echo "make soak        30-minute reliability run (SOAK_MINUTES=30)"
	@echo "make eiger_help  render help/eiger.rst to help/eiger and help/eiger.html"
	@echo "make eiger_server / make install [SPECD=/usr/local/lib/spec.d]"

venv: $(STAMP)

# pyproject.toml is the one list of dependencies; the "test" extra adds
# pytest, pytest-timeout, ruff, mypy and docutils.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# compile the stream kernels once (numba caches them): no first count waits for it
	$(PY) -c "from eiger_server.stream.kernels import warm_up; warm_up()"
	touch $@

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "unit or integration"

demo: venv
	$(PY) -m eiger_server.app.demo

bench: venv
	$(PY) bench/run.py
	$(PY) bench/pipeline.py
	$(PY) bench/wire_latency.py

SOAK_MINUTES ?= 30
soak: venv
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf build help/eiger help/eiger.html .pytest_cache

include mk/spec.mk
