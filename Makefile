# One entry point for everything; `make setup` runs on its own before any other target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA_DIR ?= data/raw
OUTPUTS ?= outputs
PREPARED ?= $(OUTPUTS)/prepared
RUNS ?= $(OUTPUTS)/runs
PRESET ?= cpu-quick
RUN ?= $(shell ls -td $(RUNS)/*/ 2>/dev/null | head -n 1)
IMAGES ?=
SET ?=
SPACE ?= cpu-quick
SWEEPS ?= $(OUTPUTS)/sweeps
BENCH_OUT ?= $(OUTPUTS)/bench
NAME ?=
GPUS_PER_TRIAL ?=
RESUME ?=
NUM_SAMPLES ?=
TIME_BUDGET ?=
ADDRESS ?=
STORAGE ?=
HOST ?= 127.0.0.1
PORT ?= 8501
NO_SERVE ?=
PYTEST_ARGS ?=
LOGDIR ?= $(OUTPUTS)
TB_PORT ?= 6006

export RAY_USAGE_STATS_ENABLED := 0

.PHONY: help setup browser prepare train evaluate explain predict pipeline tune demo dashboard dashboard-bench tensorboard test test-fast test-isa bench bench-gpu lint clean

help:
	@echo "make demo DATA_DIR=...   prepare, a cpu-quick sweep, evaluate and explain the best trial, serve the dashboard"
	@echo "make test                the whole test suite (installs everything it needs)"
	@echo "make setup | prepare | train | evaluate | explain | predict | pipeline | tune | dashboard | bench | bench-gpu | lint"

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# Chromium for the browser tests. One already there is used (CHROMIUM=, chromium, chromium-browser,
# google-chrome, Playwright's download: tests/support/chromium.py looks in the same places); otherwise
# Debian's package, where this user may install it (root, as CI runs, or passwordless sudo; Playwright's own
# download needs the internet). Without one the browser tests skip and say how to enable them (fail with CI set).
BROWSER_APT := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
browser:
	@found=$${CHROMIUM:-}; \
	for name in chromium chromium-browser google-chrome google-chrome-stable; do \
		[ -n "$$found" ] || found=$$(command -v $$name 2>/dev/null) || true; done; \
	for path in "$${PLAYWRIGHT_BROWSERS_PATH:-$${XDG_CACHE_HOME:-$$HOME/.cache}/ms-playwright}"/chromium-*/chrome-linux*/chrome; do \
		[ -n "$$found" ] || [ ! -x "$$path" ] || found=$$path; done; \
	if [ -n "$$found" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then { $(BROWSER_APT); } || echo "make browser: apt-get could not install chromium: the browser tests will be skipped"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		{ sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "make browser: sudo apt-get could not install chromium: the browser tests will be skipped"; \
	else echo "make browser: no Chromium found, and installing Debian's needs root: the browser tests will be skipped." \
		"To run them: sudo apt-get install chromium, or CHROMIUM=/path/to/chrome make test"; fi

prepare: setup
	$(PY) -m engine prepare --data-dir $(DATA_DIR) --out $(PREPARED)

train: setup
	$(PY) -m engine train --data $(PREPARED) --preset $(PRESET) --out $(RUNS) $(foreach s,$(SET),--set $(s))

evaluate: setup
	$(PY) -m engine evaluate $(RUN)

explain: setup
	$(PY) -m engine explain $(RUN)

predict: setup
	$(PY) -m engine predict $(RUN) $(IMAGES)

# One run from raw images to an explained model (the single-run path of the demo).
pipeline: prepare
	run=$$($(PY) -m engine train --data $(PREPARED) --preset $(PRESET) --out $(RUNS) $(foreach s,$(SET),--set $(s)) | tail -n 1) && \
	$(PY) -m engine evaluate $$run && \
	$(PY) -m engine explain $$run

tune: setup
	$(PY) -m tuning sweep --space $(SPACE) --data $(PREPARED) --out $(SWEEPS) \
		$(if $(NAME),--name $(NAME)) $(if $(GPUS_PER_TRIAL),--gpus-per-trial $(GPUS_PER_TRIAL)) \
		$(if $(NUM_SAMPLES),--num-samples $(NUM_SAMPLES)) $(if $(TIME_BUDGET),--time-budget $(TIME_BUDGET)) \
		$(if $(RESUME),--resume) \
		$(if $(ADDRESS),--address $(ADDRESS)) $(if $(STORAGE),--storage $(STORAGE))

# The demo sweep is rebuilt on every call unless RESUME=1 continues it.
demo: prepare
	$(if $(RESUME),,rm -rf $(SWEEPS)/$(or $(NAME),demo))
	$(MAKE) tune SPACE=$(SPACE) NAME=$(or $(NAME),demo)
	$(if $(NO_SERVE),,$(MAKE) dashboard)

dashboard: setup
	$(PY) -m dashboard --outputs $(OUTPUTS) --host $(HOST) --port $(PORT)

# TensorBoard on history.csv: `python -m engine tensorboard` exports every run below LOGDIR (a run, a sweep, or
# all of OUTPUTS) into $(OUTPUTS)/tensorboard, then serves that on HOST (127.0.0.1 unless told). Rerun to catch up.
tensorboard: setup
	logdir=$$($(PY) -m engine tensorboard $(LOGDIR) --root $(OUTPUTS) --out $(OUTPUTS)/tensorboard | tail -n 1) && \
	$(VENV)/bin/tensorboard --logdir "$$logdir" --host $(HOST) --port $(TB_PORT)

dashboard-bench: setup
	$(PY) -m tests.tools.dashboard_bench --trials 200

# Two pytest-xdist workers: much of the suite waits (servers, browsers, Ray starting), so two overlap on 2 cores;
# worksteal evens out the long tests. Shared builds are made once per run (tests/support/shared.py).
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist worksteal

test: setup browser
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The tests that assert what a trained model learned (marker numerics), again under other CPUs' kernels, each
# setting ONEDNN_MAX_CPU_ISA:ATEN_CPU_CAPABILITY: AVX2 (a CPU without AVX-512 or bf16) and AVX512_CORE (AVX-512
# without bf16). Under both, amp=auto trains in fp32 (engine/fastpath.py), as it does on such a CPU.
ISA_SETTINGS ?= AVX2:avx2 AVX512_CORE:avx512
test-isa: setup
	@for setting in $(ISA_SETTINGS); do \
		echo "make test-isa: ONEDNN_MAX_CPU_ISA=$${setting%%:*} ATEN_CPU_CAPABILITY=$${setting##*:}"; \
		env ONEDNN_MAX_CPU_ISA=$${setting%%:*} ATEN_CPU_CAPABILITY=$${setting##*:} \
			$(PY) -m pytest $(XDIST) -m numerics $(PYTEST_ARGS) || exit 1; \
	done

bench: setup
	$(PY) -m engine bench $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# The whole GPU check, on a machine that already has PyTorch (no venv, no internet needed):
# the CUDA tests, then the bench with time to 99.5% val accuracy and the plain loop trained in full.
bench-gpu:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_train.py -k "cuda or gpu"
	$(PYTHON) -m engine bench --data-dir $(DATA_DIR) --time-to-accuracy 0.995 --compare-accuracy --out $(BENCH_OUT)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
