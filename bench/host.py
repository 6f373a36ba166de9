"""Benchmark (make bench-host): how fast one actor's CPU side can feed its GPU.

On a GPU, an actor's CPU work (read a task's rows, tokenize, batch and pad, hash the texts, write
the part file) has to keep ahead of inference, or the GPU waits. This times that work alone, on
this machine's CPUs: the actor's own task function (`run_task`, two tasks at a time, as an actor
runs them) over documents of about 256 tokens, with a null device that answers each batch at
once with 1024-dim vectors (gte-large's) taken from a pool of random ones, so the zstd write
costs what real vectors cost. The tokenizer and card are the packaged MiniLM's with gte-large's
512-token limit: the same 30522-token uncased vocabulary as gte-large.

Baseline, in the same run: the tokenizer alone over the same documents (`TextPreparer.prepare`,
one call). `host_share_of_tokenizer` is host tokens/s over tokenizer tokens/s; `headroom` is host
tokens/s over issue 5's end-to-end target of 400k tokens/s on one H100: above 1, this machine's
CPUs alone would not hold a GPU at the target back.

    python bench/host.py --out bench/results/host.json      (make bench-host)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CORPUS,
    MINILM,
    ROOT,
    docs_of_tokens,
    exported,
    load_texts,
    write_conf,
    write_result,
    write_shards,
)

from export.stand_in import GTE_LARGE, GTE_LARGE_MAX_SEQ_LENGTH
from pipelines.batch.preflight import prepare
from pipelines.batch.task import run_task
from pipelines.config import load_config
from pipelines.output.markers import DoneMarker
from workers import Embedder, EmbedOptions
from workers.actor import CONCURRENT_TASKS
from workers.model_dir import TOKENIZER_FILE, read_card
from workers.prepare import TextPreparer

TARGET_TOKENS_PER_S = 400_000  # issue 5: end to end, one H100


class NullDevice:
    """Stands where the ONNX session does: answers at once, with vectors from a random pool."""

    device = "null"

    def __init__(self, dim: int, pool_rows: int = 4096) -> None:
        self._pool = np.random.default_rng(0).standard_normal((pool_rows, dim), np.float32)
        self._next = 0

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows = len(input_ids)
        start = self._next % (len(self._pool) - rows + 1)
        self._next += rows
        return self._pool[start : start + rows]


def main() -> None:
    args = parse_args()
    work = args.work
    model = exported(MINILM, ROOT / "build" / "bench-models" / "minilm-fp32")
    card = dataclasses.replace(
        read_card(model), dim=GTE_LARGE["hidden_size"], max_seq_length=GTE_LARGE_MAX_SEQ_LENGTH
    )
    preparer = TextPreparer.from_file(model / TOKENIZER_FILE, card)
    embedder = Embedder(card, preparer, NullDevice(card.dim), max_batch_tokens=args.batch_tokens)
    docs = docs_of_tokens(load_texts(args.corpus), preparer, args.docs)
    corpus = write_shards(docs, len(docs), 8, work / "in")
    tokenizer_s, host_s = [], []
    for _ in range(args.repeats):
        seconds, tokens = time_tokenizer(preparer, docs)
        tokenizer_s.append(seconds)
        seconds, results = time_host(embedder, model, corpus, work / "out", args.task_rows)
        host_s.append(seconds)
        print(f"tokenizer {tokenizer_s[-1]:.2f} s, host {host_s[-1]:.2f} s", file=sys.stderr)
    written = sum(r.rows - r.rejected for r in results)
    assert written == len(docs), f"the host side wrote {written} of {len(docs)} documents"
    # Under use_cache (the default) a text the task already has is not tokenized twice.
    host_tokens = sum(r.tokens for r in results)
    tok, host = statistics.median(tokenizer_s), statistics.median(host_s)
    write_result(
        args.out,
        {
            "cores": len(os.sched_getaffinity(0)),
            "docs": len(docs),
            "tokens": tokens,
            "mean_tokens_per_doc": round(tokens / len(docs), 1),
            "dim": card.dim,
            "task_rows": args.task_rows,
            "max_batch_tokens": args.batch_tokens,
            "tokenizer_alone": rates(tokenizer_s, tok, tokens, len(docs)),
            "host_side": rates(host_s, host, host_tokens, len(docs)),
            "host_seconds_per_stage": stage_seconds(results),
            "host_share_of_tokenizer": round(host_tokens / host / (tokens / tok), 3),
            "target_tokens_per_s": TARGET_TOKENS_PER_S,
            "headroom": round(host_tokens / host / TARGET_TOKENS_PER_S, 2),
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "host.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-host")
    parser.add_argument("--docs", type=int, default=40000)
    parser.add_argument("--task-rows", type=int, default=2000)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def time_tokenizer(preparer: TextPreparer, docs: list[str]) -> tuple[float, int]:
    """Seconds to tokenize the documents, and the tokens they make."""
    clock = time.perf_counter()
    prepared = preparer.prepare(docs, EmbedOptions())
    return time.perf_counter() - clock, int(prepared.n_tokens.sum())


def time_host(
    embedder: Embedder, model: Path, corpus: Path, out: Path, task_rows: int
) -> tuple[float, list[DoneMarker]]:
    """Every task of a fresh output through run_task, CONCURRENT_TASKS at a time."""
    shutil.rmtree(out, ignore_errors=True)
    job = prepare(load_config(write_conf(out, model, corpus, task_rows)))
    clock = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT_TASKS) as pool:
        results = list(pool.map(lambda t: run_task(embedder, job.spec(t)), job.tasks))
    return time.perf_counter() - clock, results


def rates(seconds: list[float], median: float, tokens: int, docs: int) -> dict[str, Any]:
    return {
        "seconds": [round(s, 3) for s in seconds],
        "tokens_per_s": round(tokens / median),
        "docs_per_s": round(docs / median, 1),
    }


def stage_seconds(results: list[DoneMarker]) -> dict[str, float]:
    """Summed over tasks; two run at once, so the sum is about twice the wall time."""
    stages = results[0].seconds.keys()
    return {name: round(sum(r.seconds[name] for r in results), 3) for name in stages}


if __name__ == "__main__":
    main()
