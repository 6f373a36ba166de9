"""Planning: input files -> tasks of at most `rows_per_task` rows, each with a stable id.

A task id is made of its file and row range, so the same input always gives the same tasks and
a rerun finds the done markers of the last one. The readable part of the id is the file's key;
a short hash of the key keeps two keys that sanitize alike ('a b.csv', 'a_b.csv') apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pipelines.readers import InputFile


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
