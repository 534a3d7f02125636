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
# fill the reference machine's 2 cores (measured: the cpu book in 13.3 min; its chapters'
# runtimes add up to 19.6 min).
JOBS ?= 2
TORCHRUN_ARGS ?= --standalone
RUNNER := $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run $(TORCHRUN_ARGS) \
	--nproc_per_node $(NPROC) -m softmax_repro.pipeline.runner,$(PY) -m softmax_repro.pipeline.runner)
CHAPTERS := $(basename $(notdir $(wildcard notebooks/[0-9]*.ipynb)))
# Where executed chapters / results go (tests point these at a scratch folder).
BOOK ?= book
RESULTS ?= results
KERNEL := softmax-repro
# Threads per torch process; 2 = the cores of the reference machine.
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED := 0

.DEFAULT_GOAL := help
.PHONY: help setup book chapter verify report html test bench scaling lint clean $(addprefix chapter-,$(CHAPTERS))

help: ## List the targets with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=smoke|cpu|paper (default cpu)  DEVICE=auto|cpu|cuda  NAME=<chapter>  NPROC=<GPUs>"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	touch $(STAMP)

setup: $(STAMP) ## Create .venv, install pinned dependencies and register the Jupyter kernel

book: setup ## Set up, run every stale chapter (PROFILE=cpu, JOBS=2 at once), build the HTML
	$(MAKE) --no-print-directory -j $(JOBS) $(addprefix chapter-,$(CHAPTERS))
	$(MAKE) --no-print-directory html PROFILE=$(PROFILE) BOOK=$(BOOK) RESULTS=$(RESULTS)

$(addprefix chapter-,$(CHAPTERS)): chapter-%: setup
	$(RUNNER) execute --profile $(PROFILE) --device $(DEVICE) --name $* \
		--out-dir $(BOOK)/chapters --results-dir $(RESULTS)

chapter: setup ## Re-run one chapter: make chapter NAME=01_balanced_softmax [PROFILE=paper DEVICE=cuda NPROC=8]
	@test -n "$(NAME)" || { echo "error: NAME is required; one of: $$(ls notebooks | sed 's/.ipynb//' | tr '\n' ' ')"; exit 2; }
	$(RUNNER) execute --profile $(PROFILE) --device $(DEVICE) --name $(NAME) --force \
		--out-dir $(BOOK)/chapters --results-dir $(RESULTS)

verify: setup ## Re-run chapters (PROFILE=cpu) in a scratch folder; compare every number with results/
	$(PY) -m softmax_repro.pipeline.runner verify --profile $(PROFILE) $(if $(NAME),--name $(NAME)) \
		$(if $(TOLERANCE),--tolerance $(TOLERANCE))

report: setup ## Regenerate the ledger and status pages from results/$(PROFILE)
	$(PY) -m softmax_repro.pipeline.runner report --profile $(PROFILE) --book-dir $(BOOK) --results-dir $(RESULTS)

# MathJax served with the book (not from a CDN), so equations render offline too
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA256 := 1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
MATHJAX_TGZ := $(or $(SOFTMAX_REPRO_CACHE),data/cache)/mathjax-$(MATHJAX_VERSION).tgz
MATHJAX_JS := $(BOOK)/_mathjax/mathjax/tex-mml-chtml.js
MATHJAX_NO_NPM := error: the book serves its own MathJax; install npm (apt-get install -y npm) \
	or put mathjax-$(MATHJAX_VERSION).tgz (from npm pack mathjax@$(MATHJAX_VERSION)) into \
	$(dir $(MATHJAX_TGZ))

$(MATHJAX_JS):
	mkdir -p $(dir $(MATHJAX_TGZ)) $(@D)
	test -f $(MATHJAX_TGZ) || command -v npm >/dev/null || { echo "$(MATHJAX_NO_NPM)"; exit 1; }
	test -f $(MATHJAX_TGZ) || npm pack mathjax@$(MATHJAX_VERSION) --silent \
		--pack-destination $(dir $(MATHJAX_TGZ)) >/dev/null
	echo "$(MATHJAX_SHA256)  $(MATHJAX_TGZ)" | sha256sum --check --quiet || { \
		echo "error: $(MATHJAX_TGZ) does not match its sha256; delete it and re-run"; exit 1; }
	tar xzf $(MATHJAX_TGZ) -C $(@D) --strip-components=2 \
		package/es5/tex-mml-chtml.js package/es5/output/chtml/fonts/woff-v2

html: report $(MATHJAX_JS) ## Only render the book (no execution) into book/_build/html
	$(VENV)/bin/jupyter-book build $(BOOK) --warningiserror --keep-going --quiet
	@echo "The book is at file://$(abspath $(BOOK))/_build/html/index.html"

test: setup ## Set up and run the whole test suite (unit, notebooks at smoke, book build, browser)
	$(PY) -m pytest -q

bench: setup ## Timing ratios of the hot paths vs plain PyTorch -> results/bench.json
	$(PY) benchmarks/bench.py

scaling: setup ## Time each chapter at growing sizes and seeds -> results/scaling.json, book/scaling.md
	$(PY) benchmarks/scaling.py

lint: setup ## ruff on src, tests
	$(VENV)/bin/ruff check .

clean: ## Remove the built HTML, caches of the runner and failed notebooks (keeps .venv, results)
	rm -rf book/_build failed results/.staging results/.checkpoints .pytest_cache
