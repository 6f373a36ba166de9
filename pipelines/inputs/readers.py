"""Input shards: list them, count their rows, read one row range of one file with polars.

Formats by name: `.parquet` (any codec inside), `.jsonl`, `.ndjson` and `.json` (JSON Lines, as
Spark and BigQuery export it), `.csv`; the text formats also gzip- or zstd-compressed (`.gz`,
`.zst` after the format's suffix), decompressed on the fly. A JSON array is refused with the
command that turns it into JSON Lines; a CSV's UTF-8 byte-order mark (spreadsheet exports) is
dropped from its first column's name.

Parquet row counts come from the file footer; JSONL and CSV are counted with a lazy polars scan,
so planning never holds document text. CSV is read with every column as a string: inferring
types would turn the id "00123" into 123. Files whose names start with '_' or '.' are skipped in
a directory, as Spark and Hive skip their markers; any other unknown extension is an error rather
than a silently ignored shard, and so is anything that is not a readable regular file (a broken
symlink, a FIFO): it becomes a task that fails with the reason, so no shard is lost in silence.
A 0-byte file of any format is zero rows (with a warning), not a crash.

polars turns what it cannot represent into strings without a word: a JSONL column that mixes
strings with numbers or objects comes back as strings ('5', '{"a": 1}'), and its UTF-8 errors
name no file and no line. So a failed read is explained here (file, line, fix), and a JSONL
string column is checked against the raw lines wherever a value looks like a coerced one.
"""

from __future__ import annotations

import glob as globlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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
    # What changes when the file is written again, size aside: its mtime in ns (local files).
    version: str = ""
    # Set at planning: the column whose JSON values must be strings. read_rows is given all of
    # a task's columns alike, and ids or kept columns may well mix 1 and "a"; texts may not.
    text_column: str | None = None


def file_format(name: str) -> str | None:
    """The format a file name says (`x.jsonl.gz` -> jsonl), or None for any other name."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return FORMATS[suffix.removesuffix(".gz").removesuffix(".zst")]
    return None


def list_inputs(path: str, skip_unknown: bool = False) -> list[InputFile]:
    """The shards of a file, a directory (recursively) or a glob, in a stable order. A file of
    another kind is an error, or with `skip_unknown` skipped with a warning."""
    root, found = _expand(path)
    if not found:
        raise InputError(f"input.path {path!r} matches no files")
    files: list[InputFile] = []
    for file in sorted(found):
        fmt = file_format(file.name)
        if fmt is None and skip_unknown:
            log.warning("%s: not an input format; skipped (input.skip_unknown_files)", file)
            continue
        if fmt is None:
            raise InputError(
                f"{file}: unsupported extension {''.join(file.suffixes[-2:])!r}; input files "
                f"must end in one of {', '.join(SUFFIXES)} (or start with '_' or '.' to be "
                "skipped). Set input.skip_unknown_files: true to skip other files with a warning"
            )
        key = file.relative_to(root).as_posix() if root != file else file.name
        try:
            rows, error = count_rows(file, fmt), None
        except InputError as err:
            # One corrupt shard must not stop the others: it becomes a task that fails.
            rows, error = None, str(err)
        files.append(InputFile(str(file), key, fmt, rows, _size(file), error, _version(file)))
    if not files:
        raise InputError(f"input.path {path!r} holds no input file, only files of other kinds")
    return files


def _expand(path: str) -> tuple[Path, list[Path]]:
    target = Path(path)
    if target.is_file():
        return target.parent, [target]
    if target.is_dir():
        return target, [p for p in target.rglob("*") if not p.is_dir() and _visible(p, target)]
    if target.is_symlink():
        raise InputError(f"input.path {path!r} is a symbolic link to a missing {_link(target)}")
    if target.exists():
        raise InputError(f"input.path {path!r} is not a regular file or a directory")
    if any(ch in path for ch in "*?["):
        root = glob_root(path)
        matches = [Path(p) for p in globlib.glob(path, recursive=True)]
        return root, [p for p in matches if not p.is_dir() and _visible(p, root)]
    raise InputError(f"input.path {path!r} does not exist")


def glob_root(path: str) -> Path:
    """The directory a path or glob stands for: itself, or for a glob the directory it starts
    from (what the listing's skip rule and the path checks judge it by)."""
    static = Path(re.split(r"[*?[]", path)[0])
    return static if static.is_dir() or static == Path(path) else static.parent


def is_skipped(path: Path, root: Path) -> bool:
    """The listing's skip rule: a file under `root` is not input when any part of its path
    below root starts with '_' or '.' (an output's _state/ and _rejects/, temporaries, hidden
    files), as Spark and Hive skip them."""
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def _visible(path: Path, root: Path) -> bool:
    return not is_skipped(path, root)


def _link(path: Path) -> str:
    try:
        return repr(str(path.readlink()))
    except OSError:
        return "target"


def _version(path: Path) -> str:
    try:
        return str(path.stat().st_mtime_ns)
    except OSError:  # a broken symlink: its error says so
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a broken symlink: its error says so
        return 0


def count_rows(path: Path, fmt: str) -> int:
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"{path} is a symbolic link to a missing {_link(path)}; fix the link or remove it"
        )
    if not path.is_file():
        raise InputError(f"{path} is not a regular file (a FIFO, socket or device); remove it")
    if path.stat().st_size == 0:
        log.warning("%s is empty (0 bytes): read as zero rows", path)
        return 0
    try:
        if fmt == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        return int(_scan(path, fmt).select(pl.len()).collect().item())
    except Exception as err:
        raise read_error(path, fmt, err) from err


def read_error(path: str | Path, fmt: str, err: Exception) -> InputError:
    """Says why a file cannot be read: permissions, bad UTF-8 (with its line), or polars' own."""
    if isinstance(err, PermissionError) or "ermission denied" in str(err):
        return InputError(
            f"{path}: permission denied; make it readable by the user that runs embedpipe "
            "and its Ray workers"
        )
    if fmt != "parquet" and (where := first_bad_utf8(path)) is not None:
        line, offset = where
        return InputError(f"{path}: line {line} (byte {offset}) is not valid UTF-8; {REENCODE}")
    if fmt == "jsonl" and _starts_with(path, b"["):
        return InputError(
            f"{path} is a JSON array, not JSON Lines (one object per line); convert it, e.g. "
            "jq -c '.[]' IN > OUT.jsonl"
        )
    return InputError(f"{path}: cannot read it as {fmt}: {err}")


def _open(path: str | Path) -> pa.NativeFile:
    """The file's bytes, decompressed when its name ends in .gz or .zst."""
    return pa.input_stream(str(path), compression="detect")


def _starts_with(path: str | Path, prefix: bytes) -> bool:
    with _open(path) as stream:
        return stream.read(4096).lstrip().startswith(prefix)


def _lines(path: str | Path) -> Iterator[bytes]:
    """The file's lines (decompressed), each with its newline."""
    rest = b""
    with _open(path) as stream:
        while chunk := stream.read(1 << 20):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield line + b"\n"
    if rest:
        yield rest


def first_bad_utf8(path: str | Path) -> tuple[int, int] | None:
    """(line, byte offset) of the first byte that is not UTF-8, counted as editors (line from
    1) and `dd` (offset from 0) do; None when the whole file decodes. Only called once a read
    failed, so the second pass costs nothing on good files."""
    offset = 0
    for number, line in enumerate(_lines(path), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return number, offset + err.start
        offset += len(line)
    return None


def _scan(path: str | Path, fmt: str) -> pl.LazyFrame:
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "jsonl":
        return pl.scan_ndjson(path, infer_schema_length=None)
    return pl.scan_csv(path, infer_schema=False)


def file_columns(file: InputFile, wanted: list[str]) -> list[str]:
    """The file's columns, read cheaply: a Parquet footer, a CSV header, the first JSONL lines
    (and all of them only when the first lines lack a wanted column)."""
    path = file.path
    try:
        if file.format == "parquet":
            return list(pq.read_schema(path).names)
        if file.format == "csv":
            return _scan(path, "csv").collect_schema().names()
        sample = pl.scan_ndjson(path, infer_schema_length=SCHEMA_SAMPLE_LINES)
        names = sample.collect_schema().names()
        if all(c in names for c in wanted):
            return names
        return _scan(path, "jsonl").collect_schema().names()
    except Exception as err:
        raise read_error(path, file.format, err) from err


def read_rows(file: InputFile, start: int, stop: int, columns: list[str]) -> pl.DataFrame:
    """Rows [start, stop) of one file, only the named columns, which must all exist."""
    if file.error is not None:
        raise InputError(file.error)
    if file.size == 0:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    try:
        scan = _scan(file.path, file.format)
        present = scan.collect_schema().names()
    except Exception as err:
        raise read_error(file.path, file.format, err) from err
    if missing := [c for c in columns if c not in present]:
        settings = "input.id_column, input.text_column or input.keep_columns"
        raise InputError(missing_columns(file.path, missing, present, settings))
    try:
        frame = scan.slice(start, stop - start).select(columns).collect()
    except Exception as err:
        raise read_error(file.path, file.format, err) from err
    if file.format == "jsonl" and file.text_column in frame.columns:
        check_json_strings(file.path, frame, file.text_column, start)
    return frame


def check_json_strings(path: str, frame: pl.DataFrame, name: str, start: int) -> None:
    """Refuses a JSONL text column that polars made out of numbers, booleans, objects or
    arrays: a text 5 must not be embedded as the text '5'. (A column of numbers only stays
    numeric, and its rows become rejects.) Only values that look coerced are looked up in the
    raw lines, so a clean file costs one regex match per text."""
    if frame.schema[name] != pl.String:
        return
    values = frame[name].to_list()
    suspects = [i for i, v in enumerate(values) if v is not None and COERCED.fullmatch(v)]
    for row, line, value in _raw_values(path, start, suspects, name):
        if not isinstance(value, str | None):
            kind = {bool: "boolean", int: "number", float: "number", dict: "object"}
            raise InputError(
                f"{path}: line {line} (row {start + row}): {name!r} is a JSON "
                f"{kind.get(type(value), 'array')}, {json.dumps(value)[:40]}, not a string; "
                f"polars would embed it as text. Write every {name!r} as a JSON string or null"
            )


def _raw_values(path: str, start: int, rows: list[int], name: str) -> list[tuple[int, int, object]]:
    """(row, line number, parsed value of `name`) for the given rows of a task, from the raw
    lines; polars skips blank lines, so rows are counted over the non-blank ones."""
    if not rows:
        return []
    lines = (
        pl.scan_lines(path, name="line_text", row_index_name="line", row_index_offset=1)
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
