"""Input shards: count their rows and read one row range of one file with polars, from a local
disk or an object store (listing.py finds them).

Formats by name: `.parquet` (any codec inside), `.jsonl`, `.ndjson` and `.json` (JSON Lines, as
Spark and BigQuery export it), `.csv`; the text formats also gzip- or zstd-compressed (`.gz`,
`.zst` after the format's suffix), decompressed on the fly. A JSON array is refused with the
command that turns it into JSON Lines; a CSV's UTF-8 byte-order mark (spreadsheet exports) is
dropped from its first column's name.

Parquet row counts come from the file footer; JSONL and CSV are counted with a lazy polars scan,
so planning never holds document text. CSV is read with every column as a string: inferring
types would turn the id "00123" into 123. Anything that is not a readable regular file (a broken
symlink, a FIFO) becomes a task that fails with the reason, so no shard is lost in silence. A
0-byte file of any format is zero rows (with a warning), not a crash.

polars turns what it cannot represent into strings without a word: a JSONL column that mixes
strings with numbers or objects comes back as strings ('5', '{"a": 1}'), and its UTF-8 errors
name no file and no line. So a failed read is explained here (file, line, fix), and a JSONL
string column is checked against the raw lines wherever a value looks like a coerced one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipelines.storage import stores
from pipelines.storage.settings import StorageSettings

FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
# Whole-file compression of the text formats; Parquet compresses inside its pages.
COMPRESSIONS = (".gz", ".zst")
SUFFIXES = [
    *FORMATS,
    *(f"{s}{c}" for s in FORMATS if FORMATS[s] != "parquet" for c in COMPRESSIONS),
]
# JSONL lines polars reads to guess the columns before confirming a missing one on the whole file
SCHEMA_SAMPLE_LINES = 100
# What polars makes of a JSON number, boolean, object or array it had to turn into a string
COERCED = re.compile(r"-?\d[\d.eE+-]*|true|false|\{.*\}|\[.*\]", re.DOTALL)
REENCODE = "re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"

log = logging.getLogger(__name__)


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
    # What changes when the file is written again, size aside: its mtime in ns (local files),
    # its ETag (S3)
    version: str = ""
    storage: StorageSettings = field(default_factory=StorageSettings)
    # Set at planning: the column whose JSON values must be strings. read_rows is given all of
    # a task's columns alike, and ids or kept columns may well mix 1 and "a"; texts may not.
    text_column: str | None = None


def count_rows(location: str, fmt: str, storage: StorageSettings, size: int) -> int:
    if not stores.is_remote(location):
        check_regular(Path(location))
    if size == 0:
        log.warning("%s is empty (0 bytes): read as zero rows", location)
        return 0
    try:
        if fmt == "parquet":
            return int(_parquet(location, storage).metadata.num_rows)
        return int(_scan(location, fmt, storage).select(pl.len()).collect().item())
    except Exception as err:
        raise read_error(location, fmt, err, storage) from err


def check_regular(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"{path} is a symbolic link to a missing {_link(path)}; fix the link or remove it"
        )
    if not path.is_file():
        raise InputError(f"{path} is not a regular file (a FIFO, socket or device); remove it")


def _link(path: Path) -> str:
    try:
        return repr(str(path.readlink()))
    except OSError:
        return "target"


def _parquet(location: str, storage: StorageSettings) -> pq.ParquetFile:
    if stores.is_remote(location):
        return pq.ParquetFile(stores.open_input(location, storage))
    return pq.ParquetFile(location)


def read_error(
    path: str | Path, fmt: str, err: Exception, storage: StorageSettings | None = None
) -> InputError:
    """Says why a file cannot be read: permissions, bad UTF-8 (with its line), or polars' own."""
    storage = storage or StorageSettings()
    if is_permission_error(err):
        return permission_error(path)
    if stores.is_remote(str(path)) and not isinstance(err, pl.exceptions.ComputeError):
        return InputError(stores.explain(err, str(path)))
    if fmt != "parquet" and (where := first_bad_utf8(path, storage)) is not None:
        line, offset = where
        return InputError(f"{path}: line {line} (byte {offset}) is not valid UTF-8; {REENCODE}")
    if fmt == "jsonl" and is_json_array(path, storage):
        return json_array_error(path)
    return InputError(f"{path}: cannot read it as {fmt}: {err}")


def is_permission_error(err: Exception) -> bool:
    return isinstance(err, PermissionError) or "ermission denied" in str(err)


def permission_error(path: str | Path) -> InputError:
    return InputError(
        f"{path}: permission denied; make it readable by the user that runs embedpipe and its "
        "Ray workers"
    )


def is_json_array(path: str | Path, storage: StorageSettings) -> bool:
    """Whether the file (decompressed) starts with '[': one JSON document, not JSON Lines."""
    with stores.open_stream(str(path), storage) as stream:
        return bool(stream.read(4096).lstrip().startswith(b"["))


def json_array_error(path: str | Path) -> InputError:
    return InputError(
        f"{path} is a JSON array, not JSON Lines (one object per line); convert it, e.g. "
        "jq -c '.[]' IN > OUT.jsonl"
    )


def coerced_text_error(place: str, name: str, value: object) -> InputError:
    """A text column value that JSON holds as a number, boolean, object or array; `place` says
    where (file and line)."""
    kind = {bool: "boolean", int: "number", float: "number", dict: "object"}
    return InputError(
        f"{place}: {name!r} is a JSON {kind.get(type(value), 'array')}, "
        f"{json.dumps(value)[:40]}, not a string; polars would embed it as text. Write every "
        f"{name!r} as a JSON string or null"
    )


def _lines(path: str | Path, storage: StorageSettings) -> Iterator[bytes]:
    """The file's lines (decompressed), each with its newline."""
    rest = b""
    with stores.open_stream(str(path), storage) as stream:
        while chunk := stream.read(1 << 20):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield line + b"\n"
    if rest:
        yield rest


def first_bad_utf8(
    path: str | Path, storage: StorageSettings | None = None
) -> tuple[int, int] | None:
    """(line, byte offset) of the first byte that is not UTF-8, counted as editors (line from
    1) and `dd` (offset from 0) do; None when the whole file decodes. Only called once a read
    failed, so the second pass costs nothing on good files."""
    offset = 0
    for number, line in enumerate(_lines(path, storage or StorageSettings()), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return number, offset + err.start
        offset += len(line)
    return None


def _scan(path: str | Path, fmt: str, storage: StorageSettings) -> pl.LazyFrame:
    options = _options(str(path), storage)
    if fmt == "parquet":
        return pl.scan_parquet(path, storage_options=options)
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=None, storage_options=options)
    return pl.scan_csv(path, infer_schema=False, storage_options=options)


def _options(location: str, storage: StorageSettings) -> dict[str, str] | None:
    """polars' storage_options: the store's settings for a remote location, none locally."""
    return storage.polars() if stores.is_remote(location) else None


def file_columns(file: InputFile, wanted: list[str]) -> list[str]:
    """The file's columns, read cheaply: a Parquet footer, a CSV header, the first JSONL lines
    (and all of them only when the first lines lack a wanted column)."""
    path, storage = file.path, file.storage
    try:
        if file.format == "parquet":
            return list(_parquet(path, storage).schema_arrow.names)
        if file.format == "csv":
            return _scan(path, "csv", storage).collect_schema().names()
        sample = pl.scan_ndjson(
            path, infer_schema_length=SCHEMA_SAMPLE_LINES, storage_options=_options(path, storage)
        )
        names = sample.collect_schema().names()
        if all(c in names for c in wanted):
            return names
        return _scan(path, "jsonl", storage).collect_schema().names()
    except Exception as err:
        raise read_error(path, file.format, err, storage) from err


def read_rows(file: InputFile, start: int, stop: int, columns: list[str]) -> pl.DataFrame:
    """Rows [start, stop) of one file, only the named columns, which must all exist."""
    if file.error is not None:
        raise InputError(file.error)
    if file.size == 0:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    try:
        scan = _scan(file.path, file.format, file.storage)
        present = scan.collect_schema().names()
    except Exception as err:
        raise read_error(file.path, file.format, err, file.storage) from err
    if missing := [c for c in columns if c not in present]:
        settings = "input.id_column, input.text_column or input.keep_columns"
        raise InputError(missing_columns(file.path, missing, present, settings))
    try:
        frame = scan.slice(start, stop - start).select(columns).collect()
    except Exception as err:
        raise read_error(file.path, file.format, err, file.storage) from err
    if file.format == "jsonl" and file.text_column in frame.columns:
        check_json_strings(file, frame, file.text_column, start)
    return frame


def check_json_strings(file: InputFile, frame: pl.DataFrame, name: str, start: int) -> None:
    """Refuses a JSONL text column that polars made out of numbers, booleans, objects or
    arrays: a text 5 must not be embedded as the text '5'. (A column of numbers only stays
    numeric, and its rows become rejects.) Only values that look coerced are looked up in the
    raw lines, so a clean file costs one regex match per text."""
    if frame.schema[name] != pl.String:
        return
    values = frame[name].to_list()
    suspects = [i for i, v in enumerate(values) if v is not None and COERCED.fullmatch(v)]
    for row, line, value in _raw_values(file, start, suspects, name):
        if not isinstance(value, str | None):
            raise coerced_text_error(f"{file.path}: line {line} (row {start + row})", name, value)


def _raw_values(
    file: InputFile, start: int, rows: list[int], name: str
) -> list[tuple[int, int, object]]:
    """(row, line number, parsed value of `name`) for the given rows of a task, from the raw
    lines; polars skips blank lines, so rows are counted over the non-blank ones."""
    if not rows:
        return []
    lines = (
        pl.scan_lines(
            file.path,
            name="line_text",
            row_index_name="line",
            row_index_offset=1,
            storage_options=_options(file.path, file.storage),
        )
        .filter(pl.col("line_text").str.strip_chars() != "")
        .slice(start, max(rows) + 1)
        .with_row_index("row")
        .filter(pl.col("row").is_in(rows))
        .collect()
    )
    return [
        (row, line, json.loads(text).get(name))
        for row, line, text in lines.select("row", "line", "line_text").iter_rows()
    ]


def missing_columns(path: str | Path, missing: list[str], present: list[str], settings: str) -> str:
    """What a file lacking columns is told: which, what it has, and the config keys to set (or,
    for a CSV read as one column, the separator it really has)."""
    found = f"{path}: column(s) {', '.join(missing)} not found; columns are: {', '.join(present)}"
    if len(present) == 1 and (sep := next((s for s in ";\t|" if s in present[0]), None)):
        return (
            f"{found}. It looks {sep!r}-separated; embedpipe reads comma-separated CSV: "
            "export it with commas, or as Parquet or JSON Lines"
        )
    return f"{found}. Set {settings}"
