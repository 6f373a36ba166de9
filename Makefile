# embedpipe: `make help` lists the targets. VENV=path reuses an existing environment.
VENV ?= .venv
PYTHON ?= python3
CONF ?= conf/default.yaml
CHAOS_TASKS ?= 200
CHAOS_KILLS ?= 30
# The suite runs on two pytest-xdist workers, a file each at a time (its module fixtures: one
# Ray): half of it waits on Ray start-ups, servers and subprocesses, so it takes about 20
# minutes instead of 26 here. Tests marked `alone` (a `ray start` cluster that other drivers
# would join, a `ray stop` that ends every Ray) run after the others, by themselves.
# TEST_WORKERS=1: plain pytest, one test at a time.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)
OUT ?= build/gpu-check
PY := $(VENV)/bin/python
EP := $(VENV)/bin/embedpipe
STAMP := $(VENV)/.embedpipe-installed

.DEFAULT_GOAL := help
.PHONY: help setup run test lint chaos bench bench-embedder bench-pipeline bench-serve bench-cache bench-host bench-gpu bench-storage bench-scale bench-output bench-long bench-plan bench-peers bench-planner bench-ops gpu-parts gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-15s %s\n", $$1, $$2}'

setup: $(STAMP) ## create $(VENV) and install embedpipe with its export, dev, plot, data and openvino extras

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[export,dev,plot,data,openvino]'
	touch $@

run: setup ## build the stdlib demo corpus, export the packaged model when missing, run $(CONF)
	$(EP) demo-corpus build/demo-corpus
	$(EP) run $(CONF)
	@echo 'read it with: $(PY) -c "import polars as pl; print(pl.read_parquet(\"build/demo-embeddings/*.parquet\"))"'

test: setup ## run the test suite (what CI runs); on TEST_WORKERS workers (2), `alone` tests after
	$(PY) -m pytest -q $(PARALLEL) -m "not alone" --durations=40 $(PYTEST_ARGS)
	$(PY) -m pytest -q -m alone $(PYTEST_ARGS) || test $$? -eq 5  # 5: PYTEST_ARGS left none

lint: setup ## ruff (lint and format check) and mypy
	$(VENV)/bin/ruff check pipelines workers export tests bench
	$(VENV)/bin/ruff format --check pipelines workers export tests bench
	$(VENV)/bin/mypy

chaos: setup ## a long chaos run: 200 tasks, 30 random SIGKILLs of actors and driver, vs a clean run (CHAOS_ARGS=--chunked: by chunk)
	$(EP) export --config $(CONF)
	rm -rf build/chaos
	$(PY) -m tests.chaos --model-dir $$($(PY) -c "from pipelines.config import load_config; print(load_config('$(CONF)').model.export_dir())") --work build/chaos --tasks $(CHAOS_TASKS) --kills $(CHAOS_KILLS) $(CHAOS_ARGS)

bench: bench-embedder bench-pipeline bench-serve bench-cache bench-host bench-storage bench-long bench-planner ## run every benchmark that needs no GPU

bench-embedder: setup ## sentence-transformers vs the fp32 and int8 exports -> bench/results/embedder.json
	$(PY) bench/embedder.py --out bench/results/embedder.json

bench-planner: setup ## the CPU's least-cost batch planner vs the greedy one, embedder time and padding -> bench/results/planner.json
	$(PY) bench/planner.py --out bench/results/planner.json

bench-ops: setup ## one CPU core's time per operator, fp32 and int8, and the matrix products' rate vs the kernel's ceiling -> bench/results/ops.json
	$(PY) bench/ops.py --out bench/results/ops.json

bench-host: setup ## an actor's CPU side (read, tokenize, write) with a null device, vs the tokenizer alone -> bench/results/host.json
	$(PY) bench/host.py --out bench/results/host.json

bench-gpu: setup ## on a GPU machine: gte-large's shape in fp16, sentence-transformers vs bare CUDA session vs embedpipe run -> bench/results/gpu.json
	$(PY) bench/gpu.py --out bench/results/gpu.json

# What the GPU machine lacks (../shared/GPU.md): ../shared/tools/gpu-parts' own list, which naming
# any package replaces, and pandas with its dependencies, which Ray Data imports (bench-peers --gpu
# in gpu-check): 297 MiB packed, still 5 parts of 60 MiB (the last 57 MiB, carried with the
# checksums and the corpus under the 64 MiB a command takes).
GPU_PARTS := onnxruntime-gpu==1.31.1 ray==2.60.0 polars==2.1.0 polars-runtime-32==2.1.0 \
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection jsonschema \
  jsonschema-specifications referencing rpds-py pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6
GPU_PART_MB ?= 60

gpu-parts: ## pack what the GPU machine lacks (gpu-parts' list and Ray Data's pandas) and the corpus into .gpuparts/
	PART_MB=$(GPU_PART_MB) ../shared/tools/gpu-parts $(GPU_PARTS)
	cp ../shared/bench/stdlib_docs.parquet .gpuparts/

gpu-check: ## one GPU window, installs nothing: versions, attention kernels, bench-gpu over every layout, gpu tests, bench-peers' fp16 variants -> $(OUT)
	PYTHON=$(PYTHON) OUT=$(OUT) bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

bench-storage: setup ## the stdlib corpus in and out of S3 (a local moto server) vs a local disk -> bench/results/storage.json
	$(PY) bench/storage.py --out bench/results/storage.json

bench-output: setup ## bytes per row, query time and recall@10 per output precision; query memory on 1M rows -> bench/results/output.json
	$(PY) bench/output.py --out bench/results/output.json

bench-long: setup ## ~3,000-token documents chunked vs truncated: tokens/s and tail-question recall@10 -> bench/results/long.json
	$(PY) bench/long.py --out bench/results/long.json

bench-peers: setup ## Ray Data + sentence-transformers vs Ray Data + EmbedBatches vs embedpipe run fp32/int8 on the stdlib corpus -> bench/results/peers.json
	$(PY) bench/peers.py --out bench/results/peers.json

bench-plan: setup ## embedpipe plan on bench-scale's 1M-row corpus: its seconds over the run's, its estimates beside the run's -> bench/results/plan.json
	$(PY) bench/plan.py --out bench/results/plan.json

bench-scale: setup ## driver peak RSS and planning time at 1M, 10M and 30M synthetic rows, Parquet and JSONL -> bench/results/scale.json
	$(PY) bench/scale.py --out bench/results/scale.json

bench-cache: setup ## re-index of the stdlib corpus with 10% changed, use_cache vs a full recompute -> bench/results/cache.json
	$(PY) bench/cache.py --out bench/results/cache.json

bench-serve: setup ## embedpipe serve (feature extraction and OpenAI routes, max_queue on) at 1/16/128 clients, and answer encoding -> bench/results/serve.json
	$(PY) bench/serve.py --out bench/results/serve.json

bench-pipeline: setup ## bare embedder vs embedpipe run, and 10k/100k/1M-row scaling -> bench/results/pipeline.json
	$(PY) bench/pipeline.py --out bench/results/pipeline.json

clean: ## remove exported models and caches (keeps $(VENV))
	rm -rf models build .pytest_cache .mypy_cache .ruff_cache
