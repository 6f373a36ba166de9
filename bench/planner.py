"""Benchmark (make bench-planner): the CPU's batch planner against the greedy one GPUs keep.

The stdlib corpus in 8 tasks (as `embedpipe run` cuts it, by row), each task one `embed` call of
an embedder as an actor holds it (every core, one single-threaded batch per core), MiniLM fp32
and int8. Each call plans its batches with `plan_least_cost` (what the embedder does on the
CPU) or with `plan_batches` (greedy cuts, MIN_LENGTH_SHARE), in interleaved rounds so a noisy
neighbour slows both alike; `least_cost_over_greedy` is the median over rounds of that round's
ratio of the two times (below 1: the CPU's planner is faster). `padding` is the share of padded
tokens beyond the texts' own, as the embedder chunks and plans them. fp32's vectors of both plans
are checked equal to the last bit (a text's vector does not depend on its batch mates); int8's,
whose batches are quantized each as a whole, agree to rounding: `max_abs_difference`.

    python bench/planner.py --out bench/results/planner.json       (make bench-planner)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import CORPUS, MINILM, ROOT, exported, host_cpu, load_texts, write_result

from workers import Embedder
from workers.batching import MIN_ROWS, padded_width, plan_batches
from workers.embedder import chunk_spans
from workers.options import EmbedOptions

TASKS = 8
Planner = Callable[[np.ndarray], list[np.ndarray]]


def main() -> None:
    args = parse_args()
    texts = load_texts(args.corpus)
    tasks = [[texts[i] for i in rows] for rows in np.array_split(np.arange(len(texts)), TASKS)]
    result: dict[str, object] = {
        "rows": len(texts),
        "tasks": TASKS,
        "model": MINILM,
        "threads": args.threads,
        "max_batch_tokens": args.max_batch_tokens,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        **host_cpu(),
    }
    for dtype in ("fp32", "int8"):
        path = exported(MINILM, args.models / f"minilm-{dtype}", dtype)
        embedder = Embedder.load(
            path, threads=args.threads, max_batch_tokens=args.max_batch_tokens,
            parallel_batches=True,
        )  # fmt: skip
        result[dtype] = compare(embedder, tasks, args.rounds, exact=dtype == "fp32")
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "planner.json")
    p.add_argument("--models", type=Path, default=ROOT / "build" / "bench-models")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    return p.parse_args()


def compare(
    embedder: Embedder, tasks: list[list[str]], rounds: int, exact: bool
) -> dict[str, object]:
    planners: dict[str, Planner] = {
        "least_cost": embedder.plan,
        "greedy": lambda lengths: plan_batches(lengths, embedder.max_batch_tokens),
    }
    embedder.embed(tasks[0][:256])  # warm-up: first-call allocations, thread pools
    seconds: dict[str, list[float]] = {name: [] for name in planners}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(rounds):
        names = list(planners) if round_ % 2 == 0 else list(planners)[::-1]
        for name in names:
            embedder.plan = planners[name]  # type: ignore[method-assign]
            start = time.perf_counter()
            vectors[name] = np.concatenate([embedder.embed(task).vectors for task in tasks])
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {name} {seconds[name][-1]:.1f} s", file=sys.stderr)
    del embedder.plan  # the class's own again
    lengths = [embedder.preparer.prepare(task, EmbedOptions()).n_tokens for task in tasks]
    difference = float(np.abs(vectors["least_cost"] - vectors["greedy"]).max())
    if exact and difference != 0:
        raise SystemExit(f"the two plans' vectors differ by up to {difference}: batch invariance")
    ratios = [a / b for a, b in zip(seconds["least_cost"], seconds["greedy"], strict=True)]
    return {
        "seconds": {name: [round(s, 2) for s in secs] for name, secs in seconds.items()},
        "padding": {name: padding(lengths, plan) for name, plan in planners.items()},
        "least_cost_over_greedy": round(statistics.median(ratios), 3),
        "max_abs_difference": difference,
    }


def padding(task_lengths: list[np.ndarray], plan: Planner) -> float:
    """Padded tokens beyond the texts' own over the texts' own, chunked as the embedder does."""
    own = padded = 0
    for lengths in task_lengths:
        for start, stop in chunk_spans(len(lengths)):
            chunk = lengths[start:stop]
            for batch in plan(chunk):
                own += int(chunk[batch].sum())
                padded += max(len(batch), MIN_ROWS) * padded_width(int(chunk[batch].max()))
    return round(padded / own - 1, 4)


if __name__ == "__main__":
    main()
