"""int8 and uint8 outputs: each kept dimension's range, the same for the whole run (a range
computed per batch would make the same text's bytes depend on its batch mates).

From output.calibration when set: a JSON file `{"min": [...], "max": [...]}`, a `.npy` of shape
(2, d), or an earlier output (the ranges its `_embedpipe.json` records, so a re-index quantizes
as it did and its cache_from rows stay comparable). Otherwise from a sample: the first rows of
up to SAMPLE_TASKS tasks spread over the run, output.calibration_rows texts in all, embedded on
an actor before any task runs; the driver reads no text. A resumed run takes the ranges its
output already records (the fingerprint holds them), never a new sample.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.config import ConfigError
from pipelines.inputs.planning import Task, read_task
from pipelines.output.fingerprint import FINGERPRINT_FILE
from pipelines.output.layout import Layout, Ranges, as_ranges, stored_ranges
from pipelines.storage.settings import StorageSettings
from pipelines.storage.tree import Tree
from workers import EmbedOptions

if TYPE_CHECKING:
    from workers import Embedder

SAMPLE_TASKS = 8


@dataclass(frozen=True)
class SampleRequest:
    tasks: tuple[Task, ...]
    rows_each: int
    text_column: str
    options: EmbedOptions
    layout: Layout


def sample_request(
    tasks: list[Task], rows: int, text_column: str, options: EmbedOptions, layout: Layout
) -> SampleRequest:
    """`rows` texts from up to SAMPLE_TASKS tasks evenly spread over the run's order."""
    count = min(SAMPLE_TASKS, len(tasks))
    picked = tuple(tasks[(i * len(tasks)) // count] for i in range(count))
    return SampleRequest(picked, math.ceil(rows / max(count, 1)), text_column, options, layout)


def sample_ranges(embedder: Embedder, request: SampleRequest) -> Ranges:
    """On an actor: the sample's kept values, their min and max per dimension."""
    texts: list[object] = []
    for task in request.tasks:
        column = read_task(task, [request.text_column])[request.text_column]
        texts += column.head(request.rows_each).to_list()
    found = embedder.embed(texts, request.options)
    kept = request.layout.cut(found.vectors[found.ok])
    if len(kept) == 0:
        raise ValueError("no text of the calibration sample could be embedded")
    return as_ranges(kept.min(axis=0), kept.max(axis=0))


def ranges_from(location: str, storage: StorageSettings) -> Ranges:
    """output.calibration's ranges: a .json or .npy file, or an earlier output's directory."""
    try:
        if location.endswith(".npy"):
            table = np.load(io.BytesIO(_read(location, storage)))
            if table.ndim != 2 or table.shape[0] != 2:
                raise ValueError(f"an array of shape (2, d) was expected, not {table.shape}")
            return as_ranges(table[0], table[1])
        if location.endswith(".json"):
            found = stored_ranges({"vectors": {"ranges": json.loads(_read(location, storage))}})
        else:
            text = Tree(location, storage).read_text(FINGERPRINT_FILE)
            found = stored_ranges(json.loads(text)) if text else None
    except (OSError, ValueError) as err:
        raise ConfigError(f"output.calibration: cannot read ranges from {location}: {err}") from err
    if found is None:
        raise ConfigError(
            f"output.calibration: {location} holds no ranges; give a JSON file "
            '{"min": [...], "max": [...]}, an .npy of shape (2, d), or an int8/uint8 output'
        )
    return found


def _read(location: str, storage: StorageSettings) -> bytes:
    folder, _, name = location.rstrip("/").rpartition("/")
    data = Tree(folder or ".", storage).read_bytes(name)
    if data is None:
        raise FileNotFoundError(f"{location} not found")
    return data


def with_ranges(layout: Layout, ranges: Ranges) -> Layout:
    """The layout with these ranges, checked against its dimensions."""
    return Layout.of(layout.dim, layout.dimensions, layout.precision, layout.normalize, ranges)
