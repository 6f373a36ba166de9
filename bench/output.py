"""Benchmark (make bench-output): what each output precision costs and keeps.

The stdlib corpus (7,286 documents) embedded once with all-MiniLM-L6-v2 on the CPU, written in
each precision (and at 128 dimensions in float32 and binary) as part files of 1,000 rows, as a
run writes them; `embedpipe query`'s scan (output/search.py) then answers 50 queries (documents'
own first sentences) on each. Reports bytes per row on disk, milliseconds per query, and
recall@10 against float32's top 10. Then `embedpipe query` on a 1M-row float32 output (random
unit vectors, 384 values) in a fresh process: its peak RSS (`query_1m_peak_mb`; the target is
under 500 MB, flat in the output's size) and seconds.

    python bench/output.py --out bench/results/output.json                (make bench-output)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import CORPUS, MINILM, ROOT, exported, load_texts, write_result

from pipelines.output.layout import Layout, as_ranges
from pipelines.output.markers import DoneMarker, PartFile
from pipelines.output.part_files import embeddings_table, parquet_bytes
from pipelines.output.search import Output, search
from pipelines.output.state import RunState
from pipelines.storage.settings import StorageSettings
from workers import Embedder
from workers.text_hash import HASH_DTYPE, text_hashes

QUERIES, K, FILE_ROWS = 50, 10, 1000
LAYOUTS = [
    ("float32", None),
    ("float16", None),
    ("int8", None),
    ("uint8", None),
    ("binary", None),
    ("ubinary", None),
    ("float32", 128),
    ("binary", 128),
]


def main() -> None:
    args = parse_args()
    model_dir = exported(MINILM, args.work / "minilm-fp32")
    embedder = Embedder.load(model_dir)
    texts = list(dict.fromkeys(t for t in load_texts(args.corpus) if t.strip()))
    vectors = embedder.embed(texts).vectors
    queries = embedder.embed(
        [t.split(".")[0][:200] for t in texts[:: len(texts) // QUERIES]][:QUERIES]
    ).vectors
    result: dict = {
        "model": "all-MiniLM-L6-v2 fp32",
        "rows": len(texts),
        "queries": QUERIES,
        "k": K,
    }
    truth = None
    for precision, dimensions in LAYOUTS:
        ranges = as_ranges(vectors.min(axis=0), vectors.max(axis=0)) if "int" in precision else None
        if ranges is not None and dimensions:
            ranges = (ranges[0][:dimensions], ranges[1][:dimensions])
        layout = Layout.of(384, dimensions, precision, True, ranges)
        out = args.work / f"out-{precision}-{dimensions or 384}"
        size = write_output(out, layout, vectors, texts)
        found, seconds = answer(out, layout, queries)
        truth = truth or found
        name = precision if dimensions is None else f"{precision}_{dimensions}d"
        result[name] = {
            "bytes_per_row": round(size / len(texts), 1),
            "query_ms": round(1000 * seconds / QUERIES, 2),
            "recall_at_10": round(
                float(
                    np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)])
                ),
                3,
            ),
        }
        print(name, result[name], file=sys.stderr)
    result.update(query_a_million(args, model_dir))
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "output.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-output")
    parser.add_argument("--million", type=int, default=1_000_000, help="rows of the large output")
    return parser.parse_args()


def fingerprint(layout: Layout, sha: str) -> dict:
    return {
        "model": {"source": MINILM, "onnx_sha256": sha, "dim": 384},
        "options": {"normalize": True, "truncate": True, "truncation_direction": "right"},
        "columns": {"id": "id", "text": "text", "keep": [], "partition_by": []},
        **({"vectors": layout.fingerprint()} if layout.fingerprint() else {}),
    }


def write_output(
    out: Path, layout: Layout, vectors: np.ndarray, texts: list[str], sha: str = "x"
) -> int:
    """The rows as part files of FILE_ROWS rows with a done marker each, as a run leaves them;
    returns the part files' bytes."""
    shutil.rmtree(out, ignore_errors=True)
    state = RunState(out)
    print_ = fingerprint(layout, sha)
    state.check_fingerprint(print_)
    total = 0
    for start in range(0, len(vectors), FILE_ROWS):
        rows = vectors[start : start + FILE_ROWS]
        n = len(rows)
        table = embeddings_table(
            [f"doc-{start + i}" for i in range(n)],
            layout.encode(rows),
            np.full(n, 10, np.int32),
            np.zeros(n, bool),
            text_hashes("", texts[start : start + n]).hashes if texts else np.zeros(n, HASH_DTYPE),
            pa.table({}),
            json.dumps(print_),
        )
        data = parquet_bytes(table)
        name = f"part-t{start:08d}.parquet"
        (out / name).write_bytes(data)
        total += len(data)
        state.mark_done(done_marker(f"t{start:08d}", name, n))
    return total


def done_marker(task_id: str, name: str, rows: int) -> DoneMarker:
    part = PartFile(name, rows, "")
    return DoneMarker(task_id, "in", 0, rows, rows, 0, 0, files=(part,))


def answer(out: Path, layout: Layout, queries: np.ndarray) -> tuple[list[list[str]], float]:
    storage = StorageSettings()
    output = Output(
        json.loads((out / "_embedpipe.json").read_text()),
        tuple(sorted(str(p) for p in out.glob("part-*.parquet"))),
        (),
    )
    clock = time.perf_counter()
    found = [[h.id for h in search(output, layout.encode(q[None]), K, storage)] for q in queries]
    return found, time.perf_counter() - clock


def query_a_million(args: argparse.Namespace, model_dir: Path) -> dict:
    """`embedpipe query` in a fresh process on a large float32 output: peak RSS and seconds."""
    out = args.work / "out-million"
    rng = np.random.default_rng(0)
    layout = Layout.of(384, None, "float32", True)
    sha = Embedder.load(model_dir, canary=False).card.onnx_sha256
    shutil.rmtree(out, ignore_errors=True)
    RunState(out).check_fingerprint(fingerprint(layout, sha))
    chunk = 20_000  # input.rows_per_task's default: one file (and row group) a task
    state = RunState(out)
    for start in range(0, args.million, chunk):
        rows = rng.standard_normal((min(chunk, args.million - start), 384)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        n = len(rows)
        table = embeddings_table(
            [f"doc-{start + i}" for i in range(n)],
            rows,
            np.full(n, 10, np.int32),
            np.zeros(n, bool),
            np.zeros(n, HASH_DTYPE),
            pa.table({}),
            json.dumps(fingerprint(layout, sha)),
        )
        name = f"part-m{start:08d}.parquet"
        (out / name).write_bytes(parquet_bytes(table))
        state.mark_done(done_marker(f"m{start:08d}", name, n))
    clock = time.perf_counter()
    query = ["query", str(out), "a query", "--model", str(model_dir), "--json"]
    ran = subprocess.run(
        [sys.executable, "-c", MEASURED, *query],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - clock
    peak_kb = int(ran.stderr.strip().splitlines()[-1])
    shutil.rmtree(out)
    return {
        "query_1m_rows": args.million,
        "query_1m_peak_mb": round(peak_kb / 1024, 1),
        "query_1m_seconds": round(seconds, 2),
    }


# `embedpipe query` in its own process, printing its own peak RSS (KiB) last on stderr: VmHWM,
# which exec resets, not ru_maxrss, which keeps the forked parent's (this benchmark's ~700 MB)
MEASURED = (
    "import re, sys\n"
    "from pipelines.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


if __name__ == "__main__":
    main()
