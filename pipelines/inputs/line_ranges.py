"""JSON Lines split by byte ranges: a 50 GB shard becomes many tasks without a counting pass.

A task of such a file owns every line that starts inside its byte range [first, stop): it reads
from first - 1 to the first newline (where its first line starts), then on past `stop` only to
finish the last line it began. So the ranges of a file share out its lines with none read twice
and none missed, whatever the range sizes, and a task reads about its own bytes, not the file
before it. Blank lines are no rows (as polars reads JSON Lines). Rows are numbered from the row
counts the digest pass finds (planning.py), so the driver never reads the file.

Compressed files cannot be entered in the middle and CSV fields may hold quoted newlines, so
only uncompressed JSON Lines are split this way; the other text formats are counted on the
cluster (batch/counting.py).
"""

from __future__ import annotations

import io
import json
import math

import polars as pl

from pipelines.inputs.readers import (
    COERCED,
    REENCODE,
    InputError,
    InputFile,
    coerced_text_error,
    is_json_array,
    is_permission_error,
    json_array_error,
    permission_error,
)
from pipelines.storage import stores

SAMPLE_BYTES = 1 << 20  # read from a file's start to size its ranges
TAIL_BYTES = 1 << 16  # read at a time past a range's end, to finish its last line
HINT_BYTES = 1 << 16  # read from a file's start for the type of a column a range has no value of


def splits_by_bytes(file: InputFile) -> bool:
    return file.format == "jsonl" and not file.path.endswith((".gz", ".zst"))


def bytes_per_task(file: InputFile, rows_per_task: int) -> int:
    """Range size for about `rows_per_task` rows, from the mean line length of the file's first
    MiB (one ranged read); the same file always gives the same size."""
    sample = stores.read_range(file.path, 0, min(file.size, SAMPLE_BYTES), file.storage)
    lines = sample.count(b"\n") or 1
    return max(1, math.ceil(rows_per_task * len(sample) / lines))


def byte_ranges(size: int, step: int) -> list[tuple[int, int]]:
    return [(first, min(first + step, size)) for first in range(0, size, step)]


def read_line_range(file: InputFile, first: int, stop: int, columns: list[str]) -> pl.DataFrame:
    """The rows of the lines that start in bytes [first, stop), only the named columns; a
    column none of them has is all null (the file has it: planning checked)."""
    begin, lines = range_lines(file, first, stop)
    # (line number within the range from 1, offset in the file, bytes) of the non-blank lines
    kept = [(n, offset, line) for n, (offset, line) in enumerate(lines, 1) if line.strip()]
    if not kept:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    check_utf8(file, first, kept)
    try:
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(line for *_, line in kept)))
    except Exception as err:
        raise parse_error(file, first, begin, err) from err
    missing = [c for c in columns if c not in frame.columns]
    frame = frame.with_columns(pl.lit(None).alias(c) for c in missing)
    frame = typed_nulls(file, frame.select(columns))
    if file.text_column in frame.columns:
        check_strings(file, first, frame, file.text_column, kept)
    return frame


def typed_nulls(file: InputFile, frame: pl.DataFrame) -> pl.DataFrame:
    """A column with no value in this range takes the type the file's first lines give it (a
    string where they give none): a part file typed `null` would stop readers of the whole
    output (polars and pyarrow refuse to merge it with the other part files' type)."""
    nulls = [c for c, t in frame.schema.items() if t == pl.Null]
    if not nulls:
        return frame
    hint = sample_types(file)
    return frame.with_columns(pl.col(c).cast(hint.get(c, pl.String)) for c in nulls)


def sample_types(file: InputFile) -> dict[str, pl.DataType]:
    """The column types of the complete lines in the file's first HINT_BYTES, nulls left out."""
    data = read(file, 0, min(file.size, HINT_BYTES))
    lines = [line for line in data[: data.rfind(b"\n") + 1].split(b"\n") if line.strip()]
    try:
        schema = pl.read_ndjson(io.BytesIO(b"\n".join(lines))).schema if lines else {}
    except Exception:  # a bad line there is its own range's error, not this one's
        return {}
    return {c: t for c, t in schema.items() if t != pl.Null}


def range_lines(file: InputFile, first: int, stop: int) -> tuple[int, list[tuple[int, bytes]]]:
    """Where the range's first line starts, and its lines (offset in the file, bytes without
    the newline)."""
    start = max(first - 1, 0)
    data = read(file, start, stop - start)
    skip = 0
    if first > 0:  # the line under way at first - 1 belongs to the range before
        skip = data.find(b"\n") + 1
        if skip == 0:
            return stop, []
    at = stop
    while not data.endswith(b"\n") and at < file.size:  # finish the last line begun
        more = read(file, at, min(TAIL_BYTES, file.size - at))
        cut = more.find(b"\n")
        data += more if cut < 0 else more[: cut + 1]
        at += len(more)
        if cut >= 0:
            break
    begin = offset = start + skip
    lines = []
    for line in data[skip:].split(b"\n"):
        lines.append((offset, line))
        offset += len(line) + 1
    if lines and lines[-1][1] == b"":  # after the final newline
        lines.pop()
    return begin, lines


def read(file: InputFile, offset: int, length: int) -> bytes:
    try:
        return stores.read_range(file.path, offset, length, file.storage)
    except Exception as err:
        if is_permission_error(err):
            raise permission_error(file.path) from err
        span = f"bytes {offset}-{offset + length}"
        raise InputError(f"{file.path}: cannot read {span}: {err}") from err


def where(file: InputFile, first: int, number: int, offset: int) -> str:
    """A line as a user finds it: its number where the range starts the file, else its byte
    offset (`tail -c +OFFSET+1` shows it)."""
    if first == 0:
        return f"{file.path}: line {number}"
    return f"{file.path}: the line at byte {offset}"


def check_utf8(file: InputFile, first: int, kept: list[tuple[int, int, bytes]]) -> None:
    for number, offset, line in kept:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            place = where(file, first, number, offset)
            raise InputError(
                f"{place} (byte {offset + err.start}) is not valid UTF-8; {REENCODE}"
            ) from None


def parse_error(file: InputFile, first: int, begin: int, err: Exception) -> InputError:
    if first == 0 and is_json_array(file.path, file.storage):
        return json_array_error(file.path)
    return InputError(f"{file.path}: cannot read the lines from byte {begin} as JSON: {err}")


def check_strings(
    file: InputFile, first: int, frame: pl.DataFrame, name: str, kept: list[tuple[int, int, bytes]]
) -> None:
    """Refuses a text column that polars made out of numbers, booleans, objects or arrays (as
    readers.check_json_strings does for a whole file), from the range's own lines."""
    if frame.schema[name] != pl.String:
        return
    for row, value in enumerate(frame[name].to_list()):
        if value is None or not COERCED.fullmatch(value):
            continue
        number, offset, line = kept[row]
        raw = json.loads(line).get(name)
        if not isinstance(raw, str | None):
            row_note = f" (row {row})" if first == 0 else ""
            raise coerced_text_error(where(file, first, number, offset) + row_note, name, raw)
