"""`embedpipe verify`: a model directory against its reference, on the built-in texts or a file.

The texts file is one text per line (.txt), a `text` field per line (.jsonl), or a `text` column
(.parquet), so the corpus a user is about to index can be the test set.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.parity import THRESHOLDS, ParityReport, builtin_texts, measure
from export.source import ExportError, load_source
from workers import Embedder


def read_texts(path: str | Path) -> list[str]:
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ExportError(f"{path} has no 'text' column; columns are: {table.column_names}")
        return [str(t) for t in table.column("text").to_pylist() if t]
    lines = path.read_text().splitlines()
    if path.suffix == ".jsonl":
        return [str(json.loads(line)["text"]) for line in lines if line.strip()]
    return [line for line in lines if line.strip()]


def verify(
    model_dir: str | Path,
    reference: str,
    texts_file: str | Path | None = None,
    min_cosine: float | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> ParityReport:
    embedder = Embedder.load(model_dir, threads=threads)
    texts = read_texts(texts_file) if texts_file else builtin_texts()
    if not texts:
        raise ExportError(f"{texts_file} holds no texts")
    source = load_source(reference, trust_remote_code)
    threshold = THRESHOLDS[embedder.card.dtype] if min_cosine is None else min_cosine
    return measure(embedder, source.model, texts, threshold)
