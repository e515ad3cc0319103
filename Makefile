# eiger_server — build, test, demo, benchmark.
# Everything runs from a project virtual environment (.venv) that the
# targets create and fill on first use, so a fresh machine needs only Python.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv test demo bench soak clean help
all: venv

help:
	@echo "make demo        start the fake DCU and eiger_server, run a short acquisition"
	@echo "make test        run the whole test suite"
	@echo "make bench       stream-path benchmark (writes BENCHMARKS.md)"
	@echo "make soak        30-minute reliability run (SOAK_MINUTES=30)"
	@echo "make eiger_help  render help/eiger.rst to help/eiger and help/eiger.html"
	@echo "make eiger_server / make install [SPECD=/usr/local/lib/spec.d]"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) -m eiger_server.app.demo

bench: venv
	$(PY) bench/run.py

SOAK_MINUTES ?= 30
soak: venv
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf build help/eiger help/eiger.html .pytest_cache

include mk/spec.mk
