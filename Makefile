# Developer entry points. `make help` lists them.
#
# Every Ray cluster here uses token auth (RAY_AUTH_MODE=token, exported below):
# the token is RAY_AUTH_TOKEN when set, else ~/.ray/auth_token. `make run`
# starts an in-process cluster, and Ray writes ~/.ray/auth_token itself the
# first time; `make ray-up-local` creates it with `ray get-auth-token --generate`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# Each recipe runs as one bash script, so loops and `if` read as shell.
.ONESHELL:
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# infinity-emb (the tests' OpenAI-compatible server) pins numpy<2 and click<8.2:
# its own venv, beside ours.
INFINITY_VENV := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed

# Job inputs and outputs, absolute: a submitted job runs in a copy of the repo.
DATA_DIR ?= $(abspath ../shared/data/movielens/ml-latest-small)
TMDB ?= $(abspath ../shared/data/tmdb/tmdb_5000_movies.csv)
RUNS_DIR ?= $(abspath runs)
CACHE_DIR ?= $(abspath .cache/embeddings)
# Extra flags for jobs/pipeline.py, e.g. ARGS="--name try1 --epochs 2".
ARGS ?=
# Training on this one machine: one Ray Train worker on all its cores, with
# the global batch of the default two workers. `make bench-quality` trained
# both models in 434 s this way and in 921 s on two 1-core workers. These
# flags beat a `--config` file's; `make run LOCAL_TRAIN= ARGS="--config
# runs/NAME/config.yaml"` repeats a run as it was. ARGS flags come later
# and win.
CORES := $(shell nproc 2>/dev/null || echo 2)
LOCAL_TRAIN ?= --num-workers 1 --cpus-per-worker $(CORES) --batch-size 512
BENCH_ARGS ?=
PYTEST_ARGS ?=
# A whole-suite limit, so a hung Ray cluster fails CI instead of stalling it.
TEST_TIMEOUT ?= 60m

export RAY_AUTH_MODE ?= token

# The local head for `make submit`. Ports sit off Ray's defaults (6379, 8265,
# 10001, 52365), which `ray.init()` clusters and other heads on this machine
# take, and outside the workers' range (10002-19999). Its own temp dir keeps
# it out of /tmp/ray, so a plain `ray.init()` (`make run`) never attaches to it.
RAY_PORT ?= 6390
DASHBOARD_PORT ?= 8275
RAY_CLIENT_PORT ?= 6391
DASHBOARD_AGENT_PORT ?= 52375
DASHBOARD_AGENT_GRPC_PORT ?= 52376
RUNTIME_ENV_AGENT_PORT ?= 52377
METRICS_EXPORT_PORT ?= 52378
# Logical CPUs: two train workers plus Ray Data tasks fit even on 2 cores.
RAY_NUM_CPUS ?= 4
RAY_LOCAL_DIR ?= /tmp/recray-ray-$(shell id -un)
RAY_LOCAL_PID := $(RAY_LOCAL_DIR)/head.pid
RAY_LOCAL_LOG := $(RAY_LOCAL_DIR)/head.log
JOBS_URL := http://127.0.0.1:$(DASHBOARD_PORT)
SUBMIT_EXCLUDES := [".git", ".venv", "runs", ".cache", ".pytest_cache", ".ruff_cache"]

.PHONY: help venv run test test-fast ray-up-local ray-down-local submit lint \
	bench clean bench-data infinity-venv bench-embed bench-quality bench-train \
	bench-serve tune

help:
	@echo "make venv            create .venv and install requirements.txt and recray"
	echo "make run ARGS=...    run jobs/pipeline.py here (in-process Ray)"
	echo "make tune ARGS=...   run jobs/tune.py here: a Ray Tune search"
	echo "make test            all tests (TEST_TIMEOUT=$(TEST_TIMEOUT))"
	echo "make test-fast       tests not marked slow"
	echo "make ray-up-local    start a local head at $(JOBS_URL)"
	echo "make submit ARGS=... ray job submit jobs/pipeline.py to that head"
	echo "make ray-down-local  stop that head (and only that head)"
	echo "make lint            ruff check and ruff format --check"
	echo "make bench           every benchmark below, one after the other"
	echo "make bench-data      histories prep, Ray Data vs pyarrow, synthetic ml-25m"
	echo "make bench-embed     embedding throughput and rate limits -> benchmarks/results/embed.json"
	echo "make bench-quality   model vs popularity, EASE, ID two-tower -> benchmarks/results/quality.json"
	echo "make bench-train     Ray Train 1 and 2 workers vs plain fit -> benchmarks/results/train.json"
	echo "make bench-serve     recommendation latency over 62,423 movies vs numpy -> benchmarks/results/serve.json"
	echo "make infinity-venv   create .venv-infinity (the tests' embedding server)"
	echo "make clean           remove caches and build leftovers"

venv: $(STAMP)

# Reinstalls only when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	[[ -x $(BIN)/python ]] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

run: venv
	$(BIN)/python jobs/pipeline.py --data-dir $(DATA_DIR) --tmdb-path $(TMDB) \
		$(LOCAL_TRAIN) $(ARGS)

infinity-venv: $(INFINITY_STAMP)

$(INFINITY_STAMP): tests/infinity-requirements.txt
	[[ -x $(INFINITY_VENV)/bin/python ]] || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install -r tests/infinity-requirements.txt
	touch $@

# A Tune search on the run folder `runs/<name>`, e.g.
# ARGS="--num-samples 4 --max-concurrent 2" (add --resume to finish one).
tune: venv
	$(BIN)/python jobs/tune.py --data-dir $(DATA_DIR) --tmdb-path $(TMDB) $(ARGS)

# --foreground: Ctrl-C reaches pytest, which then stops its Ray clusters.
test: venv infinity-venv
	timeout --foreground --kill-after=60 $(TEST_TIMEOUT) \
		$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	timeout --foreground --kill-after=60 $(TEST_TIMEOUT) \
		$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# `ray start --block` in the background: on SIGTERM it stops every process it
# started, so ray-down-local stops this head alone (`ray stop` would stop every
# Ray on the machine). The venv's bin goes first on the head's PATH, so a
# job's `python` is the venv's. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's
# single-node mode: without it Ray swaps `--node-ip-address 127.0.0.1` for the
# machine's routable address and listens on every interface. With nothing to
# drain (no Serve), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 skips the 30 s
# drain wait on SIGTERM.
ray-up-local: venv
	@head_alive() {
		[[ -f $(RAY_LOCAL_PID) ]] &&
		tr '\0' ' ' 2> /dev/null < /proc/$$(cat $(RAY_LOCAL_PID))/cmdline |
			grep -q -- "--temp-dir $(RAY_LOCAL_DIR)"
	}
	if head_alive; then
		echo "A local head is already running at $(JOBS_URL) (pid $$(cat $(RAY_LOCAL_PID)))."
		exit 0
	fi
	mkdir -p $(RAY_LOCAL_DIR)
	rm -f $(RAY_LOCAL_DIR)/ray_current_cluster
	if [[ -z "$${RAY_AUTH_TOKEN:-}" && -z "$${RAY_AUTH_TOKEN_PATH:-}" ]]; then
		$(BIN)/ray get-auth-token --generate > /dev/null
		chmod 600 ~/.ray/auth_token
	fi
	PATH="$(CURDIR)/$(BIN):$$PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
		RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
		nohup $(CURDIR)/$(BIN)/ray start --head --block \
		--node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 \
		--port $(RAY_PORT) --dashboard-port $(DASHBOARD_PORT) \
		--ray-client-server-port $(RAY_CLIENT_PORT) \
		--dashboard-agent-listen-port $(DASHBOARD_AGENT_PORT) \
		--dashboard-agent-grpc-port $(DASHBOARD_AGENT_GRPC_PORT) \
		--runtime-env-agent-port $(RUNTIME_ENV_AGENT_PORT) \
		--metrics-export-port $(METRICS_EXPORT_PORT) \
		--num-cpus $(RAY_NUM_CPUS) --temp-dir $(RAY_LOCAL_DIR) \
		--disable-usage-stats \
		< /dev/null > $(RAY_LOCAL_LOG) 2>&1 &
	echo $$! > $(RAY_LOCAL_PID)
	for _ in $$(seq 90); do
		if ! head_alive; then
			echo "ray start failed; the end of $(RAY_LOCAL_LOG):" >&2
			tail -n 30 $(RAY_LOCAL_LOG) >&2
			exit 1
		fi
		if [[ -f $(RAY_LOCAL_DIR)/ray_current_cluster ]] &&
			$(BIN)/ray job list --address $(JOBS_URL) > /dev/null 2>&1; then
			echo "Local head up: $(JOBS_URL) (log: $(RAY_LOCAL_LOG))."
			echo "Dashboard: $(JOBS_URL); stop it with 'make ray-down-local'."
			exit 0
		fi
		sleep 2
	done
	echo "The head did not answer at $(JOBS_URL) within 180 s; see $(RAY_LOCAL_LOG)." >&2
	exit 1

ray-down-local:
	@head_alive() {
		[[ -f $(RAY_LOCAL_PID) ]] &&
		tr '\0' ' ' 2> /dev/null < /proc/$$(cat $(RAY_LOCAL_PID))/cmdline |
			grep -q -- "--temp-dir $(RAY_LOCAL_DIR)"
	}
	if ! head_alive; then
		echo "No local head is running (no live pid in $(RAY_LOCAL_PID))."
		rm -f $(RAY_LOCAL_PID)
		exit 0
	fi
	pid=$$(cat $(RAY_LOCAL_PID))
	kill -TERM "$$pid"
	for _ in $$(seq 60); do
		head_alive || break
		sleep 1
	done
	if head_alive; then
		echo "The head (pid $$pid) is still running after 60 s; kill -KILL $$pid." >&2
		exit 1
	fi
	rm -f $(RAY_LOCAL_PID) $(RAY_LOCAL_DIR)/ray_current_cluster
	echo "Local head stopped."

# The job runs in an uploaded copy of the repo, hence the absolute paths.
submit: venv
	$(BIN)/ray job submit --address $(JOBS_URL) --working-dir . \
		--runtime-env-json '{"excludes": $(SUBMIT_EXCLUDES)}' \
		-- python jobs/pipeline.py \
		--data-dir $(DATA_DIR) --tmdb-path $(TMDB) \
		--runs-dir $(RUNS_DIR) --cache-dir $(CACHE_DIR) $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One after the other: on a few cores, concurrent benchmarks skew each other.
bench: bench-data bench-embed bench-quality bench-train bench-serve

# Histories prep on SYNTHETIC ml-25m: Ray Data vs a one-process pyarrow
# reference -> benchmarks/results/data.json. BENCH_ARGS="--scale 0.05" for a
# twentieth; the synthetic data is cached under /tmp/recray-bench-data.
bench-data: venv
	RAY_TMPDIR=$${RAY_TMPDIR:-/tmp/ray-bench-data} \
		$(BIN)/python benchmarks/bench_data.py $(BENCH_ARGS)

bench-embed: venv infinity-venv
	$(BIN)/python benchmarks/bench_embed.py $(BENCH_ARGS)

# One run of the main job on ml-latest-small; also rewrites README's table.
bench-quality: venv
	$(BIN)/python benchmarks/bench_quality.py $(LOCAL_TRAIN) $(BENCH_ARGS)

bench-train: venv
	$(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)

# Keeps .venv, runs/ (results) and .cache/ (embeddings, slow to recompute).
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

# Latency of one recommendation over ml-25m's 62,423 movies on CPU, against
# numpy's matrix product and argpartition in the same run.
bench-serve: venv
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_ARGS)
