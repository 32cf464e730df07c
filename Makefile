# attention-book entry points. `make book` and `make test` create .venv from constraints.txt when needed.
PROFILE ?= quick
NB ?=
P ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: book chapter test venv browser clean help

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

# Debian's headless Chromium for the real-browser test (playwright drives it; it never downloads a browser)
browser:
	@test -x $(CHROMIUM) || (echo "installing Debian's chromium for the browser test" && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)))
	@test -x $(CHROMIUM) || (echo "error: $(CHROMIUM) missing and could not be installed (apt-get install chromium)" && exit 1)

test: $(STAMP) browser
	$(PY) -m pytest -q

clean:
	rm -rf _build
