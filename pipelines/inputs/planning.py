"""Planning: input files -> tasks of at most `rows_per_task` rows, each with a stable id.

A task id is made of its file and row range, so the same input always gives the same tasks and
a rerun finds the done markers of the last one. The readable part of the id is the file's key;
a short hash of the key keeps two keys that sanitize alike ('a b.csv', 'a_b.csv') apart.

Before any task is made, every file's columns are checked against the config (a Parquet footer,
a CSV header, a few JSONL lines): a file that lacks one becomes a task that fails saying so, and
when no file has them the config is what is wrong, so the run is refused before Ray starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from pipelines.inputs.readers import InputError, InputFile, file_columns, missing_columns


@dataclass(frozen=True)
class Task:
    task_id: str
    file: InputFile
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_tasks(files: list[InputFile], rows_per_task: int) -> list[Task]:
    if rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1, got {rows_per_task}")
    tasks = []
    for file in files:
        if file.rows is None:  # unreadable: one task, which fails with the file's error
            tasks.append(Task(task_id(file.key, 0, 0), file, 0, 0))
            continue
        for start in range(0, file.rows, rows_per_task):
            stop = min(start + rows_per_task, file.rows)
            tasks.append(Task(task_id(file.key, start, stop), file, start, stop))
    return tasks


def task_id(key: str, start: int, stop: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")[-48:] or "input"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-{start}-{stop}"


def require_columns(
    files: list[InputFile], keys: dict[str, str], text_column: str
) -> list[InputFile]:
    """The files, each told its text column, and failed where it lacks a column of `keys`
    (column -> the config key that names it). Raises when no file with rows has them all."""
    checked, problems, out = 0, [], []
    for file in files:
        file = dataclasses.replace(file, text_column=text_column)
        if file.error is None and file.rows:
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
