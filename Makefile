# attention-book entry points. `make book` and `make test` create .venv from constraints.txt when needed.
PROFILE ?= quick
NB ?=
P ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book chapter test venv clean help

help:
	@echo "make book [PROFILE=quick|smoke|full]   execute every chapter with papermill, build _build/html"
	@echo "make chapter NB=01 [PROFILE=..] [P='-p name value ...']   one chapter (then rebuild the book)"
	@echo "make test                                unit tests + smoke run of every chapter + book build"

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (attention-book)" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m nbhelpers.book --profile $(PROFILE)

chapter: $(STAMP)
	@test -n "$(NB)" || (echo "usage: make chapter NB=01 [PROFILE=quick] [P='-p name value']" && exit 2)
	$(PY) -m nbhelpers.book --profile $(PROFILE) --only $(NB) $(P)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf _build
