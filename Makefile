# Softmax, Reproduced — the only entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PROFILE ?= cpu
DEVICE ?= auto
NAME ?=
# Processes per chapter: NPROC > 1 launches every rank through torchrun (one per GPU, DDP).
NPROC ?= 1
# Chapters executed at once by `make book`: every chapter trains on one torch thread, so 2 jobs
# fill the reference machine's 2 cores (measured 2026-11-29: the cpu book in 22 min; its
# chapters' runtimes add up to 40 min).
JOBS ?= 2
TORCHRUN_ARGS ?= --standalone
RUN := $(PY) -m softmax_repro.pipeline.runner
CHAPTERS := $(basename $(notdir $(wildcard notebooks/[0-9]*.ipynb)))
# Where executed chapters / results go (tests point these at a scratch folder).
BOOK ?= book
RESULTS ?= results
KERNEL := softmax-repro
# Threads per torch process; 2 = the cores of the reference machine.
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED := 0
# Every value a user may set reaches the recipes as an environment variable and is quoted there
# ("$$NAME"), never pasted into a command line: NAME='x; touch f' is a bad chapter name, not a
# command. The runner checks each value (NAME, PROFILE, DEVICE, NPROC, TOLERANCE) before any work.
export PROFILE DEVICE NAME NPROC JOBS BOOK RESULTS TOLERANCE TORCHRUN_ARGS

.DEFAULT_GOAL := help
.PHONY: help setup book chapter verify report mathjax html unfinished-build test bench scaling lint clean $(addprefix chapter-,$(CHAPTERS))

help: ## List the targets with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=smoke|cpu|paper (default cpu)  DEVICE=auto|cpu|cuda  NAME=<chapter>  NPROC=<GPUs>"
	@echo "             BOOK=book RESULTS=results (folders)  TOLERANCE=0 (verify)  JOBS=2 (book)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	touch $(STAMP)

setup: $(STAMP) ## Create .venv, install pinned dependencies and register the Jupyter kernel

book: setup ## Set up, run every stale chapter (PROFILE=cpu, JOBS=2 at once), build the HTML
	$(MAKE) --no-print-directory -j "$$JOBS" $(addprefix chapter-,$(CHAPTERS))
	$(MAKE) --no-print-directory html

$(addprefix chapter-,$(CHAPTERS)): chapter-%: setup
	$(RUN) execute --profile="$$PROFILE" --device="$$DEVICE" --nproc="$$NPROC" --name=$* \
		--out-dir="$$BOOK/chapters" --results-dir="$$RESULTS"

chapter: setup ## Re-run one chapter: make chapter NAME=01_balanced_softmax [PROFILE=paper DEVICE=cuda NPROC=8]
	@test -n "$$NAME" || { echo "error: NAME is required; one of: $$(ls notebooks | sed 's/.ipynb//' | tr '\n' ' ')"; exit 2; }
	$(RUN) execute --profile="$$PROFILE" --device="$$DEVICE" --nproc="$$NPROC" --name="$$NAME" \
		--force --out-dir="$$BOOK/chapters" --results-dir="$$RESULTS"

verify: setup ## Re-run chapters (PROFILE=cpu) in a scratch folder; compare every number with RESULTS/
	$(RUN) verify --profile="$$PROFILE" $${NAME:+--name="$$NAME"} --tolerance="$${TOLERANCE:-0}" \
		--results-dir="$$RESULTS"

report: setup ## Regenerate the ledger and status pages from RESULTS/PROFILE
	$(RUN) report --profile="$$PROFILE" --book-dir="$$BOOK" --results-dir="$$RESULTS"

# MathJax served with the book (not from a CDN), so equations render offline too
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA256 := 1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
export MATHJAX_VERSION MATHJAX_SHA256

mathjax: ## Fetch MathJax into the data cache once (npm), checked by sha256; make html needs it
	@set -eo pipefail; \
	if [ -n "$${SOFTMAX_REPRO_CACHE+set}" ] && [ -z "$$SOFTMAX_REPRO_CACHE" ]; then \
	  echo "error: SOFTMAX_REPRO_CACHE is set but empty; unset it (cache in data/cache) or give a folder"; exit 2; fi; \
	cache="$${SOFTMAX_REPRO_CACHE:-data/cache}"; tgz="$$cache/mathjax-$$MATHJAX_VERSION.tgz"; \
	mkdir -p "$$cache"; \
	if [ ! -f "$$tgz" ]; then \
	  command -v npm >/dev/null || { echo "error: the book serves its own MathJax; install npm" \
	    "(apt-get install -y npm) or put mathjax-$$MATHJAX_VERSION.tgz (from npm pack" \
	    "mathjax@$$MATHJAX_VERSION) into $$cache"; exit 1; }; \
	  err=$$(npm pack "mathjax@$$MATHJAX_VERSION" --loglevel=error --pack-destination "$$cache" 2>&1 >/dev/null) || { \
	    echo "error: npm could not fetch mathjax@$$MATHJAX_VERSION into $$cache; npm said:"; echo "$$err"; \
	    echo "fix: check the network (or npm_config_offline), or put mathjax-$$MATHJAX_VERSION.tgz there by hand"; exit 1; }; \
	fi; \
	echo "$$MATHJAX_SHA256  $$tgz" | sha256sum --check --quiet || { \
	  echo "error: $$tgz does not match its sha256; delete it and re-run"; exit 1; }

html: report ## Only render the book (no execution) into book/_build/html
	@js="$$BOOK/_mathjax/mathjax/tex-mml-chtml.js"; test -f "$$js" || { \
	  $(MAKE) --no-print-directory mathjax && mkdir -p "$${js%/*}" && \
	  tar xzf "$${SOFTMAX_REPRO_CACHE:-data/cache}/mathjax-$$MATHJAX_VERSION.tgz" -C "$${js%/*}" \
	    --strip-components=2 package/es5/tex-mml-chtml.js package/es5/output/chtml/fonts/woff-v2; }
	@$(MAKE) --no-print-directory unfinished-build
	@mkdir -p "$$BOOK/_build" && touch "$$BOOK/_build/.incomplete"
	$(VENV)/bin/jupyter-book build "$$BOOK" --warningiserror --keep-going --quiet
	@rm -f "$$BOOK/_build/.incomplete"
	@echo "The book is at file://$$(realpath "$$BOOK")/_build/html/index.html"

# A build killed half-way (marked by BOOK/_build/.incomplete) leaves a stale search index that
# fails the next build: remove it before building again.
unfinished-build:
	@if [ -e "$$BOOK/_build/.incomplete" ]; then \
	  echo "[clean] $$BOOK/_build: the previous build did not finish"; rm -rf "$$BOOK/_build"; fi

test: setup ## Set up and run the whole test suite (unit, notebooks at smoke, book build, browser)
	$(PY) -m pytest -q

bench: setup ## Timing ratios of the hot paths vs plain PyTorch -> results/bench.json
	$(PY) benchmarks/bench.py

scaling: setup ## Time each chapter at growing sizes and seeds -> results/scaling.json, book/scaling.md
	$(PY) benchmarks/scaling.py

lint: setup ## ruff on src, tests
	$(VENV)/bin/ruff check .

clean: ## Remove BOOK/_build, the runner's caches in RESULTS and failed notebooks (keeps .venv, results)
	@test -n "$$BOOK" && test -n "$$RESULTS" || { echo "error: BOOK and RESULTS must not be empty"; exit 2; }
	rm -rf "$$BOOK/_build" "$$RESULTS/.staging" "$$RESULTS/.checkpoints" failed .pytest_cache
