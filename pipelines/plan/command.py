"""`embedpipe plan CONF`: what a run of this config will meet and cost, before it starts.

The config is read and checked exactly as `run` does (batch/preflight.py: paths, model, listing,
columns, prompt, chunking, layout); then one pass reads the input (input_pass.py), the sampled
texts are looked up in run.cache_from's text hashes a file at a time, one actor's throughput is
taken from --tokens-per-s or measured on the configured device, and the output's bytes per row
from a few rows written as the run writes them. Nothing is written under output.path, and Ray is
not started (a cluster's actor count comes from --actors, workers.num_actors, or this machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.batch.actor_plan import actor_plan
from pipelines.batch.calibration import with_ranges
from pipelines.batch.preflight import Job, prepare
from pipelines.config import Config
from pipelines.output.file_sizing import FileSizing
from pipelines.output.layout import Layout, as_ranges
from pipelines.output.part_files import embeddings_table, hashes_of, parquet_bytes
from pipelines.plan.estimate import Sampled, Throughput, figures
from pipelines.plan.input_pass import InputPass, counted, read_everything
from pipelines.plan.text_facts import TextMeasure
from pipelines.reindex.cache_from import open_cache
from pipelines.storage import stores
from workers.model_dir import TOKENIZER_FILE
from workers.prepare import TextPreparer
from workers.text_hash import HASH_BYTES, HASH_DTYPE

log = logging.getLogger(__name__)

SIZE_ROWS = 2000  # rows written to measure the output's bytes per row
CALIBRATION_S = 3.0  # about how long the model is timed for, after a warm-up call
CALL_BATCHES = 8  # batches of max_batch_tokens in each timed call, at least


@dataclass(frozen=True)
class PlanRequest:
    sample: int | None  # distinct texts sampled; None: every text (--sample 0)
    tokens_per_s: float | None  # one actor's, as given; None: measured here
    actors: int | None  # None: workers.num_actors, or what this machine would run


@dataclass(frozen=True)
class Plan:
    figures: dict[str, Any]  # what --json prints (README: "embedpipe plan")
    lengths: np.ndarray  # the sampled texts' token lengths, and the rows each stands for
    rows: np.ndarray


def plan_job(config: Config, request: PlanRequest) -> Plan:
    job = prepare(config)
    files = counted(job.files)
    card = job.card
    preparer = TextPreparer.from_file(job.model_dir / TOKENIZER_FILE, card)
    chunking = config.embedding.chunked(card.max_seq_length)
    options = config.embedding.options()
    measure = TextMeasure(preparer, card.max_seq_length, options, chunking)
    inp = config.input
    found = read_everything(
        files,
        inp.rows_per_task,
        (inp.id_column, inp.text_column),
        job.prompt,
        request.sample,
        measure,
    )
    sampled = Sampled.of(found, cached_hashes(job, found))
    throughput = _throughput(job, found, request)
    tasks = sum(c.tasks for c in found.formats.values())
    actors = min(request.actors or default_actors(config, tasks), max(tasks, 1))
    settings = {
        "max_seq_length": card.max_seq_length,
        "long_texts": "chunk" if chunking else ("truncate" if options.truncate else "reject"),
        "chunked": chunking is not None and chunking.pool == "none",
        "use_cache": config.run.use_cache,
        "cache": bool(config.run.use_cache and config.run.cache_from),
    }
    found_figures = figures(found, sampled, settings, throughput, actors, bytes_per_row(job))
    return Plan(
        {
            "config": {"output": str(config.output.path), "input": inp.path},
            "model": {"dir": str(job.model_dir), "dim": card.dim, "dtype": card.dtype},
            **found_figures,
        },
        sampled.lengths,
        sampled.rows,
    )


def cached_hashes(job: Job, found: InputPass) -> set[bytes]:
    """Of the sampled texts' hashes (or their chunks'), those run.cache_from holds, read one
    part file's text_hash column at a time; cache_from is judged as the run judges it."""
    run = job.config.run
    if not (run.use_cache and run.cache_from):
        return set()
    wanted = {h for facts in found.facts.values() for h in facts.hashes}  # type: ignore[attr-defined]
    if not wanted:
        return set()
    wanted_array = np.array(sorted(wanted), dtype=HASH_DTYPE)
    files, _ = open_cache(run.cache_from, job.fingerprint, job.storage)
    held: set[bytes] = set()
    for file in files:
        column = stores.read_parquet(file.location, job.storage, ["text_hash"]).column("text_hash")
        raw = wanted_array[np.isin(wanted_array, hashes_of(column))].tobytes()
        # sliced from the raw bytes: numpy's tolist() drops a digest's trailing zero bytes
        held.update(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES))
    return held


def _throughput(job: Job, found: InputPass, request: PlanRequest) -> Throughput | None:
    if request.tokens_per_s is not None:
        return Throughput(request.tokens_per_s, "given (--tokens-per-s)")
    texts = list(found.few_texts.values())
    if not texts:
        return None
    try:
        return calibrate(job, texts)
    except Exception as err:  # no such device here, say: the plan goes on without a time
        log.warning("could not time the model here (%s); pass --tokens-per-s", err)
        return None


def calibrate(job: Job, texts: list[str]) -> Throughput:
    """One actor's tokens per second on the configured device and threads, timing the model
    on a uniform sample of the input's texts. Calls double in size (the sample cycled) until
    one fills CALL_BATCHES of the token budget or the time is spent, and the last call's rate
    counts: a run's calls fill many batches, and timed on a few short calls a small model
    looks several times slower than it runs (per-call costs), while a large one on a CPU
    would take minutes to fill them."""
    from workers import Embedder

    workers = job.config.workers
    device = workers.device_for(local_gpus())
    budget = job.config.embedding.max_batch_tokens
    embedder = Embedder.load(
        job.model_dir, device=device, threads=workers.cpus_per_actor, max_batch_tokens=budget,
        canary=False, parallel_batches=True, runtime=workers.runtime,  # as the run's actors
    )  # fmt: skip
    options = job.config.embedding.options()
    embedder.embed(texts[:8], options)  # warm-up
    size, started = 16, time.perf_counter()
    while True:
        call = [texts[i % len(texts)] for i in range(size)]
        clock = time.perf_counter()
        tokens = int(embedder.embed(call, options).n_tokens.sum())
        seconds = time.perf_counter() - clock
        full = tokens >= CALL_BATCHES * budget
        if full or time.perf_counter() - started >= CALIBRATION_S:
            break
        size *= 2
    return Throughput(
        tokens / seconds,
        f"measured here: {device}, {workers.cpus_per_actor} thread(s), a call of {size:,} "
        f"sampled texts, {tokens:,} tokens in {seconds:.2f} s",
    )


def default_actors(config: Config, n_tasks: int) -> int:
    """The actors a run on this machine would start (a cluster: pass --actors)."""
    return actor_plan(config.workers, local_gpus(), os.cpu_count() or 1, n_tasks).count


def local_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def bytes_per_row(job: Job) -> float:
    """Bytes a row takes in a part file of this layout, codec and row groups: SIZE_ROWS rows of
    random unit vectors (which compress like a model's) with 12-character ids, written as the
    run writes them. Kept columns are not counted."""
    layout = job.layout or Layout.of(job.card.dim, None, "float32", True)
    if layout.needs_ranges:
        ones = np.ones(layout.dimensions)
        layout = with_ranges(layout, as_ranges(-ones, ones))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((SIZE_ROWS, job.card.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embeddings_table(
        [f"{i:012d}" for i in range(SIZE_ROWS)],
        layout.encode(vectors),
        np.full(SIZE_ROWS, 100, np.int32),
        np.zeros(SIZE_ROWS, bool),
        np.frombuffer(rng.bytes(16 * SIZE_ROWS), HASH_DTYPE),
        pa.table({}),
        "{}",
    )
    return len(parquet_bytes(table, FileSizing.of(job.config.output))) / SIZE_ROWS
