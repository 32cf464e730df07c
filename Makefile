# attention-book entry points. `make book` and `make test` create .venv from constraints.txt when needed.
PROFILE ?= quick
NB ?=
P ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PY_MIN := (3, 11, 5)  # what constraints.txt's pins need; keep in step with requires-python in pyproject.toml
# a usable venv: its python runs, is new enough and has pip (a failed `python3 -m venv`, e.g. on Debian without
# python3-venv, leaves a .venv without pip)
VENV_OK := $(PY) -c 'import sys, pip; sys.exit(sys.version_info < $(PY_MIN))' >/dev/null 2>&1

CHROMIUM ?= /usr/bin/chromium

.PHONY: book chapter test venv browser clean help nb lint

help:
	@echo "make book [PROFILE=quick|smoke|full] [P=--force]   execute the chapters whose inputs changed, build _build/html"
	@echo "make chapter NB=01 [PROFILE=..] [P='-p name value ...']   one chapter (then rebuild the book)"
	@echo "make test                                unit tests + smoke run of every chapter + book build"
	@echo "make nb                                  normalise the notebooks after editing them (tools/nb.py)"
	@echo "make lint                                ruff + the notebook check (what the pre-commit hook runs)"

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	@if [ -e $(VENV) ] && ! $(VENV_OK); then \
	  echo "$(VENV) is unusable (no python >= 3.11.5 with pip in it, e.g. left by a failed venv creation): recreating it"; \
	  rm -rf $(VENV); fi
	@if [ ! -e $(VENV) ]; then \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < $(PY_MIN))' >/dev/null 2>&1 || { \
	    echo "error: $(PYTHON) is $$($(PYTHON) -V 2>/dev/null || echo missing); the pinned packages need Python >= 3.11.5: make PYTHON=python3.12 (say)" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON) -m venv"; \
	  $(PYTHON) -m venv $(VENV) && $(VENV_OK) || { rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv $(VENV)' failed (no venv/ensurepip module): on Debian/Ubuntu run 'apt-get install python3-venv' (as root), then make again" >&2; exit 1; }; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (attention-book)" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m nbhelpers.book --profile $(PROFILE) $(P)

chapter: $(STAMP)
	@test -n "$(NB)" || (echo "usage: make chapter NB=01 [PROFILE=quick] [P='-p name value']" && exit 2)
	$(PY) -m nbhelpers.book --profile $(PROFILE) --only $(NB) $(P)

# Debian's headless Chromium for the real-browser test (playwright drives it; it never downloads a browser)
browser:
	@test -x $(CHROMIUM) || (echo "installing Debian's chromium for the browser test" && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)))
	@test -x $(CHROMIUM) || (echo "error: $(CHROMIUM) missing and could not be installed (apt-get install chromium)" && exit 1)

test: $(STAMP) browser
	$(PY) -m pytest -q

nb: $(STAMP)
	$(PY) tools/nb.py

lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(PY) tools/nb.py --check

clean:
	rm -rf _build
