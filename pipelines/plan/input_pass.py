"""`embedpipe plan`'s one pass over the input: every row's id and text read once, in task order,
as the run would read them; nothing written anywhere.

Exact, from every row: rows per file and format, rows without an id, texts that are null,
empty, only whitespace or not strings. Sampled: the texts themselves. The sample is a bottom-k
sample by text hash: the `k` distinct texts whose hash (the run's text_hash, prompt included)
is smallest, each with every row that holds it. Hashes are uniform, so the sample spreads over
all files, and since a sampled text brings all its rows, its repeats are counted exactly: the
share of rows that repeat an earlier row's text is estimated without the bias a row sample has
(a row sample of 1% sees a repeated pair in both rows 0.01% of the time). Repeated ids are
estimated the same way from a bottom-k sample of id hashes. Only the sampled texts are
tokenized: about k * (1 + ln(distinct texts / k)) of them over the pass. With k None every
text is in the sample and every figure is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipelines.inputs.planning import Task, needs_count, plan_tasks, read_task
from pipelines.inputs.readers import InputError, InputFile, count_rows

MAX_KEY = np.uint64(2**64 - 1)
SEED = 0x5EED  # polars' row hash: uniform 64-bit keys, stable within one process
FEW = 256  # texts kept for calibrating the model's throughput
ID_REPEATS = "id repeats an earlier row"


class BottomK:
    """The k smallest distinct keys offered, each with how many times it was offered; every
    key when k is None."""

    def __init__(self, k: int | None) -> None:
        self.k = k
        self.threshold = MAX_KEY
        self.counts: dict[int, int] = {}

    def offer(self, keys: np.ndarray) -> list[int]:
        """Counts the keys at or below the threshold; returns those first seen and kept."""
        below = keys[keys <= self.threshold]
        unique, counts = np.unique(below, return_counts=True)
        new = []
        for key, count in zip(unique.tolist(), counts.tolist(), strict=True):
            if key not in self.counts:
                new.append(key)
            self.counts[key] = self.counts.get(key, 0) + count
        if self.k is not None and len(self.counts) > self.k:
            ordered = sorted(self.counts)
            self.threshold = np.uint64(ordered[self.k - 1])
            for key in ordered[self.k :]:
                del self.counts[key]
        return [key for key in new if key in self.counts]

    @property
    def exact(self) -> bool:
        """Whether every key offered is here (the threshold never had to drop)."""
        return bool(self.threshold == MAX_KEY)


@dataclass(frozen=True)
class FileCounts:
    files: int = 0
    rows: int = 0
    tasks: int = 0
    bytes: int = 0
    unreadable: int = 0  # files or tasks that could not be read: the run fails those tasks


@dataclass
class InputPass:
    """What the pass found; the texts' own facts (keyed like `texts`) come from `measure`."""

    formats: dict[str, FileCounts] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)  # exact: reason -> rows
    rows_live: int = 0  # rows with an id and a text the model can take
    errors: list[str] = field(default_factory=list)  # what could not be read, first few
    texts: BottomK = field(default_factory=lambda: BottomK(None))
    ids: BottomK = field(default_factory=lambda: BottomK(None))
    facts: dict[int, object] = field(default_factory=dict)  # text key -> measure()'s result
    # a uniform sample of a few texts themselves (the smallest keys), to time the model on
    few: BottomK = field(default_factory=lambda: BottomK(FEW))
    few_texts: dict[int, str] = field(default_factory=dict)


Measure = Callable[[list[str]], list[object]]


def counted(files: list[InputFile]) -> list[InputFile]:
    """The files with the rows of CSV and compressed shards counted here (the run counts them
    on the cluster); a file that cannot be counted keeps its error for the pass to report."""
    out = []
    for file in files:
        if needs_count(file):
            try:
                rows = count_rows(file.path, file.format, file.storage, file.size)
                file = dataclasses.replace(file, rows=rows)
            except (InputError, OSError) as err:
                file = dataclasses.replace(file, error=str(err))
        out.append(file)
    return out


def read_everything(
    files: list[InputFile],
    rows_per_task: int,
    columns: tuple[str, str],
    prompt: str,
    sample: int | None,
    measure: Measure,
) -> InputPass:
    """One pass over every task of `files`: columns are (id column, text column); `measure`
    turns the texts first sampled into their facts (token lengths and so on)."""
    found = InputPass(texts=BottomK(sample), ids=BottomK(sample))
    tasks = plan_tasks(files, rows_per_task)
    for file in files:
        counts = found.formats.get(file.format, FileCounts())
        found.formats[file.format] = dataclasses.replace(
            counts,
            files=counts.files + 1,
            bytes=counts.bytes + file.size,
            tasks=counts.tasks + sum(t.file.key == file.key for t in tasks),
        )
    for task in tasks:
        _read_task(found, task, columns, prompt, measure)
    return found


def _read_task(
    found: InputPass, task: Task, columns: tuple[str, str], prompt: str, measure: Measure
) -> None:
    id_column, text_column = columns
    fmt = task.file.format
    try:
        if task.file.error is not None:
            raise InputError(task.file.error)
        frame = read_task(task, list(dict.fromkeys(columns)))
    except (InputError, OSError) as err:
        counts = found.formats[fmt]
        found.formats[fmt] = dataclasses.replace(counts, unreadable=counts.unreadable + 1)
        if len(found.errors) < 5:
            found.errors.append(str(err))
        return
    counts = found.formats[fmt]
    found.formats[fmt] = dataclasses.replace(counts, rows=counts.rows + frame.height)
    ids = frame[id_column].cast(pl.String)
    id_keys = ids.drop_nulls().hash(seed=SEED).to_numpy()
    repeated = _repeated_ids(found.ids, ids.is_not_null().to_numpy(), id_keys)
    found.ids.offer(id_keys)
    reasons = _reasons(frame[text_column], ids.is_null(), repeated)
    for reason, count in reasons.drop_nulls().value_counts().iter_rows():
        found.rejects[reason] = found.rejects.get(reason, 0) + count
    live = frame[text_column].filter(reasons.is_null()).cast(pl.String)  # texts, or none left
    found.rows_live += live.len()
    keys = (prompt + live).hash(seed=SEED).to_numpy()
    new = set(found.texts.offer(keys))
    _forget(found.facts, found.texts)  # dropped below the sample's threshold
    few = set(found.few.offer(keys))
    _forget(found.few_texts, found.few)
    wanted = np.flatnonzero(np.isin(keys, np.fromiter(new | few, np.uint64, len(new | few))))
    first: dict[int, str] = {}
    for key, text in zip(keys[wanted].tolist(), live.gather(wanted).to_list(), strict=True):
        first.setdefault(key, text)
    found.few_texts.update({k: first[k] for k in few})
    measured = [k for k in first if k in new]
    for key, measured_facts in zip(measured, measure([first[k] for k in measured]), strict=True):
        found.facts[key] = measured_facts


def _reasons(texts: pl.Series, no_id: pl.Series, repeated: np.ndarray) -> pl.Series:
    """Per row, why the run rejects it before the model sees it (workers/prepare.py's
    reject_reason, and the ids), or null."""
    frame = pl.DataFrame({"text": texts, "no_id": no_id, "repeated": repeated})
    text: pl.Expr
    if texts.dtype == pl.String:
        stripped = pl.col("text").str.strip_chars().str.len_chars()
        text = (
            pl.when(pl.col("text").is_null())
            .then(pl.lit("text is null"))
            .when(pl.col("text") == "")
            .then(pl.lit("text is empty"))
            .when(stripped == 0)
            .then(pl.lit("text is only whitespace"))
        )
    else:  # a column of numbers or structs: no value in it is a text
        text = (
            pl.when(pl.col("text").is_null())
            .then(pl.lit("text is null"))
            .otherwise(pl.lit("text is not a string"))
        )
    reason = (
        pl.when(pl.col("no_id"))
        .then(pl.lit("id is null"))
        .when(pl.col("repeated"))
        .then(pl.lit(ID_REPEATS))
        .otherwise(text)
    )
    return frame.select(reason.alias("reason")).to_series()


def _repeated_ids(sketch: BottomK, has_id: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per row, whether an earlier row has its id, when the sketch holds every id (k None): the
    run rejects those rows, so their texts are not embedded. A sampled sketch knows only some
    ids, so there repeats are estimated from its counts instead (estimate.py)."""
    repeated = np.zeros(len(has_id), bool)
    if sketch.k is not None:
        return repeated
    here: set[int] = set()  # this task's ids so far; earlier tasks' are the sketch's
    seen = []
    for key in keys.tolist():
        seen.append(key in sketch.counts or key in here)
        here.add(key)
    repeated[np.flatnonzero(has_id)] = seen
    return repeated


def _forget(held: dict[int, Any], sketch: BottomK) -> None:
    if sketch.k is None:  # a sketch of every key drops none
        return
    for key in [k for k in held if k not in sketch.counts]:
        del held[key]
