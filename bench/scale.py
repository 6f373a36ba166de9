"""Benchmark (make bench-scale): driver memory and planning time as the corpus grows.

Synthetic documents (12 words from a 5,000-word vocabulary, ~15 tokens), 5% of the ids and 10%
of the texts repeated from earlier rows, in Parquet and in JSON Lines, at 1M, 10M and 30M rows
by default; use_cache on (so the run plans who embeds each distinct text). The model is a BERT
stand-in of one layer and 16 dimensions: its compute is near nothing (the null device of
bench-host cannot be put inside `embedpipe run`'s actors; this is the closest real model), so
the figures are the pipeline's own. Each run is a fresh process (bench/drive.py) with one actor
on every core; it reports the driver's peak RSS, the seconds spent planning (listing and
counting the input, the digest pass, the meets) and in total, each per million rows, and
extrapolates to a billion rows with the slope of a straight-line fit.

    python bench/scale.py --out bench/results/scale.json      (make bench-scale)

`--plan-only` measures planning alone, quickly: each run is stopped (SIGTERM, as a user would)
once its first task is done, and its report's seconds_planning is kept (plan_s_per_m in
`runs`, written to --out; nothing else is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import ROOT, drive_command, exported, own_ray, run_config, write_result

from export.stand_in import GTE_LARGE_MAX_SEQ_LENGTH, BertShape, build_bert_stand_in

SHAPE: BertShape = {
    "num_hidden_layers": 1,
    "hidden_size": 16,
    "num_attention_heads": 1,
    "intermediate_size": 16,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
WORDS, VOCABULARY = 12, 5000
ROWS_PER_SHARD = 1_000_000
TASK_ROWS = 20_000  # input.rows_per_task's default


def main() -> None:
    args = parse_args()
    model = stand_in_model(args.work)
    runs = []
    for fmt in args.formats.split(","):
        for rows in [int(float(s)) for s in args.sizes.split(",")]:
            corpus = synthetic_corpus(args.work / f"in-{fmt}-{rows}", rows, fmt)
            out = args.work / "out"
            if args.plan_only:
                runs.append(plan_only(model, corpus, out, rows, fmt))
            else:
                runs.append(measure(model, corpus, out, rows, fmt))
            print(json.dumps(runs[-1]), file=sys.stderr)
            shutil.rmtree(corpus)
    measured = {"sizes": args.sizes, "formats": args.formats}  # what this run was asked for
    fitted = {} if args.plan_only else fit(runs)
    write_result(
        args.out, {"model": SHAPE, "task_rows": TASK_ROWS, **measured, "runs": runs, **fitted}
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-scale")
    parser.add_argument("--sizes", default="1e6,1e7,3e7")
    parser.add_argument("--formats", default="parquet,jsonl")
    parser.add_argument("--plan-only", action="store_true", help="planning seconds alone")
    return parser.parse_args()


def synthetic_corpus(out: Path, rows: int, fmt: str) -> Path:
    """`rows` documents in shards of ROWS_PER_SHARD; row n's id is doc-n except for 5% that
    repeat an earlier row's id, and its text is row n's words except for 10% that repeat an
    earlier row's text. Deterministic (seeded), written shard by shard."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for first in range(0, rows, ROWS_PER_SHARD):
        n = np.arange(first, min(first + ROWS_PER_SHARD, rows), dtype=np.int64)
        earlier = (rng.random(len(n)) * np.maximum(n, 1)).astype(np.int64)
        id_of = np.where(rng.random(len(n)) < 0.05, earlier, n)
        text_of = np.where(rng.random(len(n)) < 0.10, earlier, n)
        words = [pl.format("w{}", pl.lit(word_of(text_of, k))) for k in range(WORDS)]
        frame = pl.DataFrame({"n": id_of}).select(
            pl.format("doc-{}", "n").alias("id"), pl.concat_str(words, separator=" ").alias("text")
        )
        name = out / f"shard-{first // ROWS_PER_SHARD:04d}"
        if fmt == "parquet":
            frame.write_parquet(name.with_suffix(".parquet"))
        else:
            frame.write_ndjson(name.with_suffix(".jsonl"))
    return out


def word_of(rows: np.ndarray, k: int) -> pl.Series:
    """The k-th word of each row's text: splitmix64 of (row, k), so any row's text can be remade
    (a multiplicative hash alone is linear, and gave one distinct text in 17 at 1M rows)."""
    z = rows.astype(np.uint64) * np.uint64(WORDS) + np.uint64(k) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return pl.Series((z ^ (z >> np.uint64(31))) % np.uint64(VOCABULARY))


def stand_in_model(work: Path) -> Path:
    """The one-layer 16-dim BERT stand-in, built and exported once under `work`."""
    source = work / "bert-1x16"
    if not (source / "modules.json").exists():
        build_bert_stand_in(source, SHAPE, GTE_LARGE_MAX_SEQ_LENGTH)
    return exported(str(source), work / "bert-1x16-fp32")


def scale_conf(model: Path, corpus: Path, out: Path) -> Path:
    """A job config beside a fresh `out`: one actor on every core, use_cache on."""
    shutil.rmtree(out, ignore_errors=True)
    conf = out.with_suffix(".yaml")
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}}}\n"
        f"output: {{path: {out}}}\n"
        f"workers: {{device: cpu, cpus_per_actor: {os.cpu_count()}, num_actors: 1}}\n"
        "run: {use_cache: true}\n"
    )
    return conf


def measure(model: Path, corpus: Path, out: Path, rows: int, fmt: str) -> dict:
    found = run_config(scale_conf(model, corpus, out))
    report, millions = found["report"], rows / 1e6
    assert report["tasks_done"] == report["tasks_total"], report
    settled = ("rows_embedded", "rows_from_cache", "rows_deduplicated", "rows_rejected")
    assert sum(report[k] for k in settled) == rows, report
    identical = repeats_as_the_rule_says(corpus, out)
    shutil.rmtree(out)
    return {
        "format": fmt,
        "rows": rows,
        "driver_peak_mb": found["driver_peak_rss_mb"],
        "plan_s_per_m": round(report["seconds_planning"] / millions, 3),
        "total_s_per_m": round(report["seconds"] / millions, 3),
        "rows_rejected": report["rows_rejected"],
        "rows_embedded": report["rows_embedded"],
        "rows_deduplicated": report["rows_deduplicated"],
        "tasks": report["tasks_total"],
        "repeats_identical": identical,
    }


def plan_only(model: Path, corpus: Path, out: Path, rows: int, fmt: str) -> dict:
    """The run's planning seconds: it is stopped once its first task is done."""
    drive = drive_command(scale_conf(model, corpus, out))
    with subprocess.Popen(drive, env=own_ray(), stdout=subprocess.DEVNULL) as run:
        while run.poll() is None and not any((out / "_state" / "done").glob("*")):
            time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
    report = json.loads((out / "_state" / "report.json").read_text())
    shutil.rmtree(out)
    planning = report["seconds_planning"]
    return {"format": fmt, "rows": rows, "plan_s_per_m": round(planning / (rows / 1e6), 3)}


def repeats_as_the_rule_says(corpus: Path, out: Path) -> bool:
    """Whether the run rejected exactly the repeated ids one sort over the corpus finds (the
    first occurrence in file order wins), each naming that first occurrence."""
    frames = []
    for shard in sorted(corpus.iterdir()):
        read = pl.read_parquet if shard.suffix == ".parquet" else pl.read_ndjson
        frame = read(shard).select("id").with_row_index("row")
        frames.append(frame.with_columns(pl.lit(shard.name).alias("file")))
    rows = pl.concat(frames)
    first = rows.group_by("id", maintain_order=True).agg(
        pl.first("file").alias("first_file"), pl.first("row").alias("first_row")
    )
    expected = (
        rows.filter(~pl.col("id").is_first_distinct())
        .join(first, on="id")
        .select(
            "file",
            pl.col("row").cast(pl.Int64),
            pl.format("id '{}' repeats row {} of {}", "id", "first_row", "first_file").alias(
                "reason"
            ),
        )
    )
    rejects = pl.read_parquet(out / "_rejects" / "*.parquet")
    found = rejects.filter(pl.col("reason").str.contains(" repeats row ")).select(
        "file", "row", "reason"
    )
    return bool(found.sort("file", "row").equals(expected.sort("file", "row")))


def fit(runs: list[dict]) -> dict:
    """Per format, a straight line through (rows, value): its value at a billion rows."""
    found: dict = {"extrapolated_1b": {}}
    for fmt in sorted({r["format"] for r in runs}):
        mine = [r for r in runs if r["format"] == fmt]
        if len(mine) < 2:
            continue
        rows = np.array([r["rows"] for r in mine], dtype=float)
        peak = np.polyfit(rows, [r["driver_peak_mb"] for r in mine], 1)
        plan = np.polyfit(rows, [r["plan_s_per_m"] * r["rows"] / 1e6 for r in mine], 1)
        total = np.polyfit(rows, [r["total_s_per_m"] * r["rows"] / 1e6 for r in mine], 1)
        found["extrapolated_1b"][fmt] = {
            "driver_peak_mb": round(float(np.polyval(peak, 1e9)), 1),
            "driver_mb_per_m_rows": round(float(peak[0]) * 1e6, 3),
            "plan_s_per_m": round(float(np.polyval(plan, 1e9)) / 1e3, 3),
            "total_s_per_m": round(float(np.polyval(total, 1e9)) / 1e3, 3),
        }
        first, last = mine[0], mine[-1]
        found.setdefault("driver_peak_growth", {})[fmt] = round(
            last["driver_peak_mb"] / first["driver_peak_mb"] - 1, 3
        )
    return found


if __name__ == "__main__":
    main()
