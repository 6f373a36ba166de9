"""The run's fingerprint: what decides an output's vectors and layout, built once per run and
kept at OUT/_embedpipe.json and in every part file's Parquet metadata.

It holds the model (sha256 of model.onnx), the embedding options, the columns, rows_per_task,
partitioning, the input listing and the schema; batch size and actor count are left out on
purpose: they change speed, not results. A rerun whose fingerprint differs is refused with
`diff`'s account of what differs, and run.cache_from reuses a part file only when its own
fingerprint agrees on the model and options.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pipelines.config import Config
from pipelines.inputs.line_ranges import splits_by_bytes
from pipelines.inputs.readers import InputFile
from pipelines.output.file_sizing import FileSizing
from pipelines.output.layout import QUANTIZED, Layout
from workers.chunking import Chunking
from workers.model_dir import ModelCard
from workers.openvino_session import COMPUTE_DTYPE

FINGERPRINT_FILE = "_embedpipe.json"
FINGERPRINT_KEY = b"embedpipe.fingerprint"  # in each part file's schema metadata


def build_fingerprint(
    config: Config, card: ModelCard, files: list[InputFile], layout: Layout
) -> dict[str, Any]:
    inp, out = config.input, config.output
    # output.dimensions and precision, only when not the default (so an output made before
    # they existed keeps its fingerprint): what the embedding column holds
    vectors = {"vectors": found} if (found := layout.fingerprint()) else {}
    if layout.precision in QUANTIZED:  # where the ranges came from
        vectors["vectors"]["calibration"] = out.calibration or {"rows": out.calibration_rows}
    # how part files are cut, also only when not the default
    sizing = FileSizing.of(out)
    cutting = {} if sizing.is_default else {"files": dataclasses.asdict(sizing)}
    # embedding.chunking, also only when set: which rows there are, and under pool: mean what
    # each vector is
    chunking = config.embedding.chunked(card.max_seq_length)
    chunks = {} if chunking is None else {"chunking": dataclasses.asdict(chunking)}
    return {
        "model": {
            "source": card.source,
            "onnx_sha256": card.onnx_sha256,
            "dim": card.dim,
            **_compute(config),
        },
        "options": config.embedding.model_dump(exclude={"max_batch_tokens", "chunking"}),
        "columns": {
            "id": inp.id_column,
            "text": inp.text_column,
            "keep": list(inp.keep_columns),
            "partition_by": list(out.partition_by),
        },
        "rows_per_task": inp.rows_per_task,
        # Keys only: a shard fixed after a failed run must not make its output refuse the rerun.
        # A changed file under a done task is caught by that task's done marker instead.
        # JSON Lines are cut into tasks by bytes: an output made when they were cut by rows
        # would see its done tasks as new ones
        "inputs": [{"key": f.key, "format": f.format, **_split(f)} for f in files],
        "schema": f"id string, {_chunk_columns(chunking)}embedding {_embedding(layout)}, "
        "n_tokens int32, truncated bool, text_hash fixed_size_binary[16], then the kept columns",
        **vectors,
        **cutting,
        **chunks,
    }


def _compute(config: Config) -> dict[str, str]:
    """workers.runtime openvino-bf16 computes the vectors in bfloat16: other vectors than an
    fp32 run's, so a resume or cache_from never mixes the two. onnxruntime and openvino give an
    fp32 export's vectors to fp32 rounding and leave the fingerprint as it was."""
    found = COMPUTE_DTYPE.get(config.workers.runtime)
    return {"compute": found} if found else {}


def _chunk_columns(chunking: Chunking | None) -> str:
    if chunking is None or chunking.pool == "mean":
        return ""
    return "chunk int32, n_chunks int32, char_start int64, char_end int64, "


def _embedding(layout: Layout) -> str:
    return "fixed_size_list<float32>[dim]" if layout.is_default else layout.describe()


def _split(file: InputFile) -> dict[str, str]:
    return {"split": "bytes"} if splits_by_bytes(file) else {}


def diff(
    old: Any, new: Any, where: str = "", labels: tuple[str, str] = ("here", "now")
) -> list[str]:
    """Human-readable differences between two JSON values, by key path; `labels` say where
    each side comes from."""
    then, now = labels
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{where}.{key}" if where else key
            found += diff(old.get(key), new.get(key), path, labels)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in diff(a, b, f"{where}[{i}]", labels)
        ]
    if isinstance(old, list) and isinstance(new, list):
        return [f"{where}: {len(old)} entries {then}, {len(new)} {now}"]
    if old != new:
        return [f"{where or 'fingerprint'}: {_short(old)} {then}, {_short(new)} {now}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
