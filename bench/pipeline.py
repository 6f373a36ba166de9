"""Benchmark: the bare embedder against `embedpipe run` end to end, and how the run scales.

Efficiency: the stdlib corpus cut into 8 Parquet shards, embedded once by the bare embedder and
once by `embedpipe run` (one actor with the same thread count, read to _SUCCESS), in alternating
rounds. Ray's start-up (cluster and actor model load) is reported on its own; `efficiency` is bare
time / run time after start-up. The corpus's own ids repeat (583 of 7,286), so the shards get ids
of their row number: both sides then embed the same 7,286 texts.

Scale: a tiny random-weight BERT (compute is not the point) over 10k, 100k and 1M rows cycled from
the same texts, one single-threaded actor per core; time per row after start-up, and the
driver's peak RSS, each run in a fresh process (bench/drive.py). Tasks are 1,000 rows: every size
then has more tasks than the actors have slots (two each), so each run is measured in the
steady state where one task tokenizes while the other infers, and 1M rows means 1,000 tasks for
the driver to track. With 5,000-row tasks, 10k rows gave each actor a single task with nothing
to overlap, and cost 1.9x per row what 100k did.

    python bench/pipeline.py --out bench/results/pipeline.json      (make bench-pipeline)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import (
    CORPUS,
    MINILM,
    ROOT,
    drive,
    exported,
    load_texts,
    write_result,
    write_shards,
)

from export.stand_in import TINY, build_bert_stand_in
from workers import Embedder

TASK_ROWS = 1000


def main() -> None:
    args = parse_args()
    texts = load_texts(args.corpus)
    work = args.work
    result = {
        "corpus": {"path": str(args.corpus), "docs": len(texts)},
        "threads": args.threads,
        "efficiency": efficiency(args, texts, work),
        "scale": scale(args, texts, work),
    }
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-pipeline")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes", default="10000,100000,1000000")
    return p.parse_args()


def efficiency(args: argparse.Namespace, texts: list[str], work: Path) -> dict:
    model = exported(MINILM, ROOT / "build" / "bench-models" / "minilm-fp32")
    corpus = write_shards(texts, len(texts), 8, work / "eff-in")
    embedder = Embedder.load(model, threads=args.threads, max_batch_tokens=2048)
    embedder.embed(texts[:64])
    bare, run, startup = [], [], []
    for _ in range(args.repeats):
        clock = time.perf_counter()
        embedder.embed(texts)
        bare.append(time.perf_counter() - clock)
        report = drive(model, corpus, work / "eff-out", args.threads, 1)["report"]
        run.append(report["seconds"] - report["seconds_startup"])
        startup.append(report["seconds_startup"])
        print(
            f"bare {bare[-1]:.1f} s, run {run[-1]:.1f} s + {startup[-1]:.1f} s start-up",
            file=sys.stderr,
        )
    ratios = [b / r for b, r in zip(bare, run, strict=True)]
    return {
        "bare_seconds": [round(s, 3) for s in bare],
        "run_seconds_after_startup": [round(s, 3) for s in run],
        "ray_startup_seconds": [round(s, 3) for s in startup],
        "efficiency": round(statistics.median(ratios), 3),
        "target": 0.9,
    }


def scale(args: argparse.Namespace, texts: list[str], work: Path) -> dict:
    source = work / "tiny-bert"
    if not (source / "modules.json").exists():
        build_bert_stand_in(source, TINY, 256)
    model = exported(str(source), work / "tiny-bert-fp32")
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = {}
    for size in sizes:
        corpus = write_shards(texts, size, max(1, size // 100_000), work / f"scale-{size}")
        # The corpus cycles 7,286 texts: under use_cache a run would embed each once and copy
        # the rest, and the sizes would time copying. Every row goes through the model.
        found = drive(
            model,
            corpus,
            work / f"scale-{size}-out",
            1,
            args.threads,
            TASK_ROWS,
            overrides=("run.use_cache=false",),
        )
        report = found["report"]
        after = report["seconds"] - report["seconds_startup"]
        runs[str(size)] = {
            "seconds_after_startup": round(after, 3),
            "ray_startup_seconds": round(report["seconds_startup"], 3),
            "us_per_row": round(1e6 * after / size, 1),
            "driver_peak_rss_mb": found["driver_peak_rss_mb"],
        }
        print(f"{size:,} rows: {runs[str(size)]}", file=sys.stderr)
        shutil.rmtree(corpus)
        shutil.rmtree(work / f"scale-{size}-out")
    per_row = [r["us_per_row"] for r in runs.values()]
    return {
        "model": {"layers": TINY["num_hidden_layers"], "hidden": TINY["hidden_size"]},
        "runs": runs,
        "per_row_spread": round(max(per_row) / min(per_row) - 1, 3),
        "max_driver_peak_rss_mb": max(r["driver_peak_rss_mb"] for r in runs.values()),
        "targets": {"per_row_spread": 0.2, "driver_peak_rss_mb": 300},
    }


if __name__ == "__main__":
    main()
