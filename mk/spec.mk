# mk/spec.mk -- building and installing eiger_server for spec.
#
# Included by the top-level Makefile, which defines PY (the project's venv
# python, .venv/bin/python) and a target "venv" that creates that venv with
# every requirement installed.
#
#   make eiger_server        build/eiger_server: launcher running the server
#                            with the venv's python
#   make eiger_help          help/eiger (spec plain-text help) and
#                            help/eiger.html from help/eiger.rst
#   make install [SPECD=..]  SPECD/servers/eiger_server, SPECD/macros/eiger.mac
#                            and SPECD/help/eiger (SPECD: /usr/local/lib/spec.d)

SPECD ?= /usr/local/lib/spec.d
PY ?= .venv/bin/python
INSTALL ?= install

# Absolute paths, so the launcher works wherever it is copied to.
SPEC_MK_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
SPEC_MK_PYTHON = $(abspath $(PY))

SPEC_HELP_SOURCES := help/eiger.rst help/params_table.rst tools/rst2spechelp.py

.PHONY: eiger_server eiger_help install

eiger_server: build/eiger_server

# The launcher is rewritten when the venv's location or this recipe changes.
build/eiger_server: mk/spec.mk | venv
	@mkdir -p $(@D)
	@{ echo '#!/bin/sh'; \
	   echo '# eiger_server launcher, written by "make eiger_server".'; \
	   echo '# It runs the server with the Python environment it was built with.'; \
	   echo 'PYTHONPATH="$(SPEC_MK_ROOT)$${PYTHONPATH:+:$$PYTHONPATH}"'; \
	   echo 'export PYTHONPATH'; \
	   echo 'exec "$(SPEC_MK_PYTHON)" -m eiger_server "$$@"'; \
	 } > $@.tmp
	@chmod 755 $@.tmp
	@mv -f $@.tmp $@
	@echo "wrote $@ (python: $(SPEC_MK_PYTHON))"

eiger_help: help/eiger help/eiger.html

# The parameter table comes from the server's own table (eiger_server/control/table.py).
help/params_table.rst: eiger_server/control/table.py tools/gen_param_table.py | venv
	$(PY) tools/gen_param_table.py -o $@

help/eiger: $(SPEC_HELP_SOURCES) | venv
	$(PY) tools/rst2spechelp.py help/eiger.rst -o $@

help/eiger.html: $(SPEC_HELP_SOURCES) | venv
	$(PY) tools/rst2spechelp.py help/eiger.rst --html $@

install: build/eiger_server help/eiger macros/eiger.mac
	$(INSTALL) -d "$(SPECD)/servers" "$(SPECD)/macros" "$(SPECD)/help"
	$(INSTALL) -m 755 build/eiger_server "$(SPECD)/servers/eiger_server"
	$(INSTALL) -m 644 macros/eiger.mac "$(SPECD)/macros/eiger.mac"
	$(INSTALL) -m 644 help/eiger "$(SPECD)/help/eiger"
	@echo "installed eiger_server, eiger.mac and the eiger help page in $(SPECD)"
