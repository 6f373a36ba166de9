"""Benchmark (make bench-storage): the same run with its input and output on a local disk and on
S3, through a local S3 API (moto's server), in alternating rounds.

The stdlib corpus (ids by row number) in 8 Parquet shards, MiniLM fp32 in one actor with every
core, `run.use_cache: false`; each run is a fresh process with its own local Ray (bench/drive.py).
For S3 the shards are uploaded to a bucket first, the run reads them from it, writes its part
files, markers and `_SUCCESS` to it, and holds its lock there. `efficiency` is local seconds over
S3 seconds, after start-up (Ray and the model load, the same for both). moto's server is slower
than S3 (one Python process, on the same cores as the run), so there is no target: the figure
says what the object-store path costs at most.

    python bench/storage.py --out bench/results/storage.json      (make bench-storage)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from common import (
    CORPUS,
    MINILM,
    ROOT,
    exported,
    load_texts,
    run_config,
    write_result,
    write_shards,
)

SHARDS = 8


def main() -> None:
    args = parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    texts = load_texts(args.corpus)
    model = exported(MINILM, ROOT / "build" / "bench-models" / "minilm-fp32")
    corpus = write_shards(texts, len(texts), SHARDS, args.work / "corpus")
    endpoint, stop = start_s3()
    try:
        upload(corpus, endpoint)
        local_s, s3_s, rows = [], [], 0
        for round_ in range(args.repeats):
            local = drive(model, str(corpus), str(args.work / f"out-{round_}"), endpoint, args)
            remote = drive(model, "s3://bench/corpus/", f"s3://bench/out-{round_}", endpoint, args)
            rows = local["report"]["rows_embedded"]
            assert remote["report"]["rows_embedded"] == rows, remote["report"]
            local_s.append(embedding_s(local))
            s3_s.append(embedding_s(remote))
            print(f"local {local_s[-1]:.2f} s, s3 {s3_s[-1]:.2f} s", file=sys.stderr)
    finally:
        stop()
    local_m, s3_m = statistics.median(local_s), statistics.median(s3_s)
    write_result(
        args.out,
        {
            "docs": len(texts),
            "rows": rows,
            "shards": SHARDS,
            "local_seconds": [round(s, 3) for s in local_s],
            "s3_seconds": [round(s, 3) for s in s3_s],
            "efficiency": round(local_m / s3_m, 3),
            "store": "moto server (local S3 API), same machine",
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "storage.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-storage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-per-task", type=int, default=1000)
    return parser.parse_args()


def start_s3() -> tuple[str, Any]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def upload(corpus: Path, endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    for shard in sorted(corpus.glob("*.parquet")):
        client.upload_file(str(shard), "bench", f"corpus/{shard.name}")


def drive(model: Path, inp: str, out: str, endpoint: str, args: argparse.Namespace) -> dict:
    """One run to a fresh output, in its own process: its report."""
    if out.startswith("/"):
        shutil.rmtree(out, ignore_errors=True)
    conf = args.work / "job.yaml"
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: '{inp}', rows_per_task: {args.rows_per_task}}}\n"
        f"output: {{path: '{out}'}}\n"
        f"workers: {{device: cpu, cpus_per_actor: {os.cpu_count()}, num_actors: 1}}\n"
        "embedding: {max_batch_tokens: 2048}\n"
        "run: {use_cache: false}\n"
        f"storage: {{endpoint_url: '{endpoint}'}}\n"
    )
    return run_config(conf)


def embedding_s(found: dict) -> float:
    report = found["report"]
    return float(report["seconds"] - report["seconds_startup"])


if __name__ == "__main__":
    main()
