"""Planning: input files -> tasks of at most `rows_per_task` rows, each with a stable id.

Uncompressed JSON Lines are split by bytes instead (line_ranges.py), about `rows_per_task` rows
a range, and their rows numbered once the digest pass has counted each range (`number_rows`).
A task id is made of its file and row (or byte) range, so the same input always gives the same
tasks and a rerun finds the done markers of the last one. The readable part of the id is the
file's key; a short hash of the key keeps two keys that sanitize alike ('a b.csv', 'a_b.csv')
apart.

Before any task is made, every file's columns are checked against the config (a Parquet footer,
a CSV header, a few JSONL lines): a file that lacks one becomes a task that fails saying so, and
when no file has them the config is what is wrong, so the run is refused before Ray starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import polars as pl

from pipelines.inputs.line_ranges import (
    byte_ranges,
    bytes_per_task,
    read_line_range,
    splits_by_bytes,
)
from pipelines.inputs.readers import (
    InputError,
    InputFile,
    file_columns,
    missing_columns,
    read_rows,
)


@dataclass(frozen=True)
class Task:
    task_id: str
    file: InputFile
    start: int  # rows of the file; for a byte range, 0 and 0 until the digest pass counted it
    stop: int
    span: tuple[int, int] | None = None  # bytes of the file, for JSON Lines (line_ranges.py)

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_tasks(files: list[InputFile], rows_per_task: int) -> list[Task]:
    if rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1, got {rows_per_task}")
    tasks = []
    for file in files:
        if file.error is not None:  # unreadable: one task, which fails with the file's error
            tasks.append(Task(task_id(file.key, 0, 0), file, 0, 0))
        elif splits_by_bytes(file):
            step = bytes_per_task(file, rows_per_task) if file.size else 1
            for first, stop in byte_ranges(file.size, step):
                tasks.append(Task(task_id(file.key, first, stop, "b"), file, 0, 0, (first, stop)))
        else:
            for start in range(0, file.rows or 0, rows_per_task):
                stop = min(start + rows_per_task, file.rows or 0)
                tasks.append(Task(task_id(file.key, start, stop), file, start, stop))
    return tasks


def needs_count(file: InputFile) -> bool:
    """A CSV or compressed shard listed without its rows (batch/counting.py counts it)."""
    return file.error is None and file.rows is None and not splits_by_bytes(file)


def task_id(key: str, start: int, stop: int, unit: str = "") -> str:
    """unit: "" for a row range, "b" for a byte range."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")[-48:] or "input"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-{unit}{start}-{stop}"


def read_task(task: Task, columns: list[str]) -> pl.DataFrame:
    """A task's rows, only the named columns."""
    if task.span is not None and task.file.error is None:
        return read_line_range(task.file, *task.span, columns)
    return read_rows(task.file, task.start, task.stop, columns)


def number_rows(
    tasks: list[Task], counts: dict[str, int]
) -> tuple[list[Task], dict[str, InputError]]:
    """The tasks with the rows of each byte range numbered from `counts` (task id -> rows, from
    the digest pass): each starts where the one before it in its file stopped. A range after
    one that could not be counted cannot be numbered: it is returned with its error."""
    at: dict[str, int | None] = {}  # file key -> the next row, None once unknown
    numbered, unknown = [], {}
    for task in sorted(tasks, key=_file_order):
        if task.span is None:
            numbered.append(task)
            continue
        start = at.get(task.file.key, 0)
        count = counts.get(task.task_id)
        if start is None or count is None:
            at[task.file.key] = None
            if count is not None:
                unknown[task.task_id] = InputError(
                    f"{task.file.path}: bytes {task.span[0]}-{task.span[1]} come after a part "
                    "of the file that could not be read, so their rows cannot be numbered; fix "
                    "that part (its task's failure says how) and rerun"
                )
            numbered.append(task)
            continue
        at[task.file.key] = start + count
        numbered.append(dataclasses.replace(task, start=start, stop=start + count))
    position = {t.task_id: i for i, t in enumerate(tasks)}
    return sorted(numbered, key=lambda t: position[t.task_id]), unknown


def _file_order(task: Task) -> tuple[str, int]:
    return task.file.key, task.span[0] if task.span else task.start


def require_columns(
    files: list[InputFile], keys: dict[str, str], text_column: str
) -> list[InputFile]:
    """The files, each told its text column, and failed where it lacks a column of `keys`
    (column -> the config key that names it). Raises when no file with rows has them all."""
    checked, problems, out = 0, [], []
    for file in files:
        file = dataclasses.replace(file, text_column=text_column)
        if file.error is None and file.size and file.rows != 0:  # None: counted later
            checked += 1
            if problem := _missing(file, keys):
                problems.append(problem)
                file = dataclasses.replace(file, rows=None, error=problem)
        out.append(file)
    if problems and len(problems) == checked:
        more = f" (and {len(problems) - 1} more file(s) alike)" if len(problems) > 1 else ""
        raise InputError(f"no input file has every column the config names: {problems[0]}{more}")
    return out


def _missing(file: InputFile, keys: dict[str, str]) -> str | None:
    try:
        present = file_columns(file, list(keys))
    except InputError as err:
        return str(err)
    missing = [c for c in keys if c not in present]
    if not missing:
        return None
    settings = " or ".join(dict.fromkeys(keys[c] for c in missing))
    return missing_columns(file.path, missing, present, settings)
