"""Benchmark: a re-index with use_cache against a full recompute, same machine, same run.

The stdlib corpus (ids by row number: the corpus's own ids repeat) in 8 Parquet shards is
embedded once ("last week"). Then 10% of its documents, drawn at random, get a changed text,
and the changed corpus is embedded twice in alternating rounds: in full (`run.use_cache=false`,
every row through the model) and as a re-index (`run.cache_from` = last week's output). Each run
is a fresh process with its own local Ray (bench/drive.py), MiniLM fp32 in one actor with every
core. `speedup` is full / re-index in whole-run seconds (start-up included: what a user waits);
`speedup_after_startup` leaves out Ray's start-up and the model load, which are the same for
both and do not grow with the corpus. The two outputs' part files are compared byte for byte.

    python bench/cache.py --out bench/results/cache.json      (make bench-cache)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

from common import CORPUS, MINILM, ROOT, drive, exported, load_texts, write_result, write_shards

SHARDS = 8


def main() -> None:
    args = parse_args()
    texts = load_texts(args.corpus)
    work = args.work
    model = exported(MINILM, ROOT / "build" / "bench-models" / "minilm-fp32")
    changed = sorted(random.Random(args.seed).sample(range(len(texts)), len(texts) // 10))
    edited = list(texts)
    for i in changed:
        edited[i] = texts[i] + " (revised)"
    last_week = write_shards(texts, len(texts), SHARDS, work / "week1")
    this_week = write_shards(edited, len(edited), SHARDS, work / "week2")
    first = run(args, model, last_week, work / "out-week1")
    print(f"last week: {first['seconds']:.1f} s", file=sys.stderr)
    full, cached = [], []
    for _ in range(args.repeats):
        full.append(run(args, model, this_week, work / "out-full", "run.use_cache=false"))
        cached.append(
            run(args, model, this_week, work / "out-cached", f"run.cache_from=[{work}/out-week1]")
        )
        print(
            f"full {full[-1]['seconds']:.1f} s, re-index {cached[-1]['seconds']:.1f} s",
            file=sys.stderr,
        )
    identical = part_files(work / "out-full") == part_files(work / "out-cached")
    write_result(args.out, summary(args, texts, changed, full, cached, identical))


def summary(
    args: argparse.Namespace,
    texts: list[str],
    changed: list[int],
    full: list[dict],
    cached: list[dict],
    identical: bool,
) -> dict:
    def seconds(reports: list[dict], after_startup: bool = False) -> list[float]:
        return [r["seconds"] - (r["seconds_startup"] if after_startup else 0) for r in reports]

    last = cached[-1]
    return {
        "corpus": {"path": str(args.corpus), "docs": len(texts), "changed": len(changed)},
        "threads": args.threads,
        "full_seconds": [round(s, 3) for s in seconds(full)],
        "reindex_seconds": [round(s, 3) for s in seconds(cached)],
        "startup_seconds": [round(r["seconds_startup"], 3) for r in full + cached],
        "speedup": round(statistics.median(seconds(full)) / statistics.median(seconds(cached)), 2),
        "speedup_after_startup": round(
            statistics.median(seconds(full, True)) / statistics.median(seconds(cached, True)), 2
        ),
        "rows_embedded": last["rows_embedded"],
        "rows_from_cache": last["rows_from_cache"],
        "rows_deduplicated": last["rows_deduplicated"],
        "full_rows_embedded": full[-1]["rows_embedded"],
        "identical_part_files": identical,
        "target": {"speedup": 5},
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-cache")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def run(args: argparse.Namespace, model: Path, corpus: Path, out: Path, *overrides: str) -> dict:
    """One run, one actor with every thread: its report."""
    report: dict = drive(model, corpus, out, args.threads, 1, overrides=overrides)["report"]
    return report


def part_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


if __name__ == "__main__":
    main()
