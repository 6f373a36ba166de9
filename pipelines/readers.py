"""Input shards: list them, count their rows, read one row range of one file with polars.

Parquet row counts come from the file footer; JSONL and CSV are counted with a lazy polars scan,
so planning never holds document text. CSV is read with every column as a string: inferring
types would turn the id "00123" into 123. Files whose names start with '_' or '.' are skipped in
a directory, as Spark and Hive skip their markers; any other unknown extension is an error rather
than a silently ignored shard.
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class InputError(ValueError):
    """An input path or file that cannot be read as asked; names the file and the fix."""


@dataclass(frozen=True)
class InputFile:
    path: str  # as found on disk
    key: str  # relative to the input root: stable when the same data is mounted elsewhere
    format: str
    rows: int | None  # None: the file could not be read; `error` says why
    size: int
    error: str | None = None


def list_inputs(path: str) -> list[InputFile]:
    """The shards of a file, a directory (recursively) or a glob, in a stable order."""
    root, found = _expand(path)
    if not found:
        raise InputError(f"input.path {path!r} matches no files")
    files = []
    for file in sorted(found):
        fmt = FORMATS.get(file.suffix.lower())
        if fmt is None:
            raise InputError(
                f"{file}: unsupported extension {file.suffix!r}; input files must be one of "
                f"{', '.join(FORMATS)} (or start with '_' or '.' to be skipped)"
            )
        key = file.relative_to(root).as_posix() if root != file else file.name
        try:
            rows, error = count_rows(file, fmt), None
        except InputError as err:
            # One corrupt shard must not stop the others: it becomes a task that fails.
            rows, error = None, str(err)
        files.append(InputFile(str(file), key, fmt, rows, file.stat().st_size, error))
    return files


def _expand(path: str) -> tuple[Path, list[Path]]:
    target = Path(path)
    if target.is_file():
        return target.parent, [target]
    if target.is_dir():
        return target, [p for p in target.rglob("*") if p.is_file() and _visible(p, target)]
    if any(ch in path for ch in "*?["):
        prefix = Path(path.split("*")[0].split("?")[0].split("[")[0])
        root = prefix if prefix.is_dir() else prefix.parent
        matches = [Path(p) for p in globlib.glob(path, recursive=True)]
        return root, [p for p in matches if p.is_file() and _visible(p, root)]
    raise InputError(f"input.path {path!r} does not exist")


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def count_rows(path: Path, fmt: str) -> int:
    try:
        if fmt == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        return int(_scan(path, fmt).select(pl.len()).collect().item())
    except Exception as err:
        raise InputError(f"{path}: cannot read it as {fmt}: {err}") from err


def _scan(path: str | Path, fmt: str) -> pl.LazyFrame:
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=None)
    return pl.scan_csv(path, infer_schema=False)


def read_rows(file: InputFile, start: int, stop: int, columns: list[str]) -> pl.DataFrame:
    """Rows [start, stop) of one file, only the named columns, which must all exist."""
    if file.error is not None:
        raise InputError(file.error)
    scan = _scan(file.path, file.format)
    try:
        present = scan.collect_schema().names()
    except Exception as err:
        raise InputError(f"{file.path}: cannot read it as {file.format}: {err}") from err
    if missing := [c for c in columns if c not in present]:
        raise InputError(
            f"{file.path}: column(s) {', '.join(missing)} not found; columns are: "
            f"{', '.join(present)}. Set input.id_column, input.text_column or input.keep_columns"
        )
    return scan.slice(start, stop - start).select(columns).collect()
