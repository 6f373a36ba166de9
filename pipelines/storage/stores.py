"""Locations as strings: a local path, or `s3://bucket/key` (also `gs://`, `az://`), and the few
operations embedpipe needs on them: list a prefix, stat, open, write, create-if-absent.

Data goes through pyarrow's filesystems (one interface for local disks and the three clouds);
on S3, listing and the conditional writes the run lock needs go through boto3, whose listing
carries each object's ETag (the version a done marker records) and whose PutObject takes
`If-None-Match` / `If-Match` (S3's conditional writes). A local file's version is its mtime in
nanoseconds, as is a gs:// or az:// object's (pyarrow reports no generation or ETag there).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.storage.settings import StorageSettings

SCHEMES = ("s3", "gs", "az")
GLOB_CHARS = "*?["


class StorageError(OSError):
    """A location that cannot be reached as asked; the message names the URL and the fix."""


@dataclass(frozen=True, order=True)
class Entry:
    uri: str
    size: int
    version: str  # S3: the ETag; elsewhere the mtime in ns


def scheme_of(location: str) -> str | None:
    head, sep, _ = location.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def is_remote(location: str) -> bool:
    return scheme_of(location) is not None


def split(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of an object-store URI; key may be '' (the bucket itself)."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket after {scheme}://; write {scheme}://BUCKET/PREFIX")
    return scheme.lower(), bucket, key


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return str(Path(base, *parts))


def relative(location: str, root: str) -> str:
    """location below root, '/'-separated."""
    if is_remote(location):
        return location[len(root.rstrip("/")) :].lstrip("/")
    return Path(location).relative_to(root).as_posix()


def glob_prefix(location: str) -> str:
    """The part of a location before its first glob character."""
    at = min((location.find(c) for c in GLOB_CHARS if c in location), default=len(location))
    return location[:at]


@functools.lru_cache(maxsize=16)
def filesystem(scheme: str | None, settings: StorageSettings) -> pafs.FileSystem:
    if scheme is None:
        return pafs.LocalFileSystem()
    if scheme == "s3":
        options: dict[str, Any] = {
            "region": settings.region,
            "anonymous": settings.anonymous,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.attempts),
        }
        if settings.endpoint_url:
            endpoint = settings.endpoint_url
            options["scheme"] = "http" if endpoint.startswith("http:") else "https"
            options["endpoint_override"] = endpoint.split("://", 1)[-1]
        return pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})
    if scheme == "gs":
        return pafs.GcsFileSystem(anonymous=settings.anonymous)
    account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get(
        "AZURE_STORAGE_ACCOUNT"
    )
    if not account:
        raise StorageError("az:// needs AZURE_STORAGE_ACCOUNT_NAME set to the storage account")
    return pafs.AzureFileSystem(account_name=account)


def fs_path(location: str, settings: StorageSettings) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds a location, and the location's path in it."""
    scheme = scheme_of(location)
    if scheme is None:
        return filesystem(None, settings), str(Path(location).absolute())
    _, bucket, key = split(location)
    return filesystem(scheme, settings), f"{bucket}/{key}".rstrip("/")


# The environment variables a client's credentials come from: a client is cached per value, so
# a changed key (a server's rotated secret, a test's second user) gets a client that uses it.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def s3_client(settings: StorageSettings) -> Any:
    return _s3_client(settings, tuple(os.environ.get(name) for name in CREDENTIAL_VARIABLES))


@functools.lru_cache(maxsize=8)
def _s3_client(settings: StorageSettings, _credentials: tuple[str | None, ...]) -> Any:
    import boto3

    # A session of its own: boto3's default session keeps the first credentials it resolved.
    return boto3.session.Session().client("s3", **settings.boto3())


def list_files(location: str, settings: StorageSettings) -> list[Entry]:
    """Every object (file) under a remote prefix, recursively, in key order."""
    scheme, bucket, key = split(location)
    if scheme == "s3":
        return list(_list_s3(bucket, key, settings))
    fs, path = fs_path(location, settings)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(
        Entry(f"{scheme}://{i.path}", i.size or 0, str(i.mtime_ns or ""))
        for i in infos
        if i.type == pafs.FileType.File
    )


def _list_s3(bucket: str, prefix: str, settings: StorageSettings) -> Iterator[Entry]:
    pages = s3_client(settings).get_paginator("list_objects_v2")
    try:
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield Entry(f"s3://{bucket}/{item['Key']}", item["Size"], item["ETag"].strip('"'))
    except Exception as err:
        raise StorageError(explain(err, f"s3://{bucket}/{prefix}")) from err


def glob(location: str, settings: StorageSettings) -> list[Entry]:
    """The objects a remote glob matches: `*` and `?` within one path segment, `**` across."""
    prefix = glob_prefix(location)
    pattern = _glob_regex(location)
    root = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"
    return [e for e in list_files(root, settings) if pattern.fullmatch(e.uri)]


def _glob_regex(location: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/?|\*|\?)", location)
    out = []
    for part in parts:
        if part in ("**", "**/"):
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        else:
            out.append(fnmatch.translate(part).removeprefix("(?s:").removesuffix(")\\Z"))
    return re.compile("".join(out))


def stat(location: str, settings: StorageSettings) -> Entry | None:
    """Size and version of one object, or None where there is none."""
    scheme = scheme_of(location)
    if scheme == "s3":
        head = _head(location, settings)
        if head is None:
            return None
        return Entry(location, head["ContentLength"], head["ETag"].strip('"'))
    fs, path = fs_path(location, settings)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return Entry(location, info.size or 0, str(info.mtime_ns or ""))


def open_input(location: str, settings: StorageSettings) -> pa.NativeFile:
    """A random-access file (Parquet footers, pyarrow readers)."""
    fs, path = fs_path(location, settings)
    return fs.open_input_file(path)


def open_stream(location: str, settings: StorageSettings) -> pa.NativeFile:
    """The object's bytes in order, decompressed when its name ends in .gz or .zst."""
    fs, path = fs_path(location, settings)
    return fs.open_input_stream(path, compression="detect")


def write_bytes(location: str, data: bytes, settings: StorageSettings) -> None:
    """One object in one PUT: readers see all of it or none (remote locations only; S3 takes up
    to 5 GB in one PUT, far above a task's part file)."""
    scheme, bucket, key = split(location)
    if scheme != "s3":
        fs, path = fs_path(location, settings)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    try:
        s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data)
    except Exception as err:
        raise StorageError(explain(err, location)) from err


def read_bytes(location: str, settings: StorageSettings) -> bytes:
    """A whole (small) object: a marker, a fingerprint, a digest cache."""
    scheme, bucket, key = split(location)
    if scheme == "s3":
        try:
            body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"]
            return bytes(body.read())
        except Exception as err:
            raise StorageError(explain(err, location)) from err
    with open_stream(location, settings) as stream:
        data: bytes = stream.read()
    return data


def read_range(location: str, offset: int, length: int, settings: StorageSettings) -> bytes:
    """`length` bytes of a file from `offset` (on S3 one ranged GET)."""
    if length <= 0:
        return b""
    if scheme_of(location) == "s3":
        _, bucket, key = split(location)
        try:
            ranged = f"bytes={offset}-{offset + length - 1}"
            body = s3_client(settings).get_object(Bucket=bucket, Key=key, Range=ranged)["Body"]
            return bytes(body.read())
        except Exception as err:
            raise StorageError(explain(err, location)) from err
    with open_input(location, settings) as file:
        data: bytes = file.read_at(length, offset)
    return data


def delete(location: str, settings: StorageSettings) -> None:
    fs, path = fs_path(location, settings)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def create_if_absent(location: str, data: bytes, settings: StorageSettings) -> str | None:
    """Writes the object only where none exists (S3's If-None-Match: *); its ETag, or None
    when another writer got there first."""
    _, bucket, key = split(location)
    try:
        done = s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except Exception as err:
        if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return None
        raise StorageError(explain(err, location)) from err
    return str(done["ETag"]).strip('"')


def replace_if(location: str, data: bytes, etag: str, settings: StorageSettings) -> str | None:
    """Overwrites the object only while its ETag is still `etag` (If-Match); the new ETag, or
    None when it changed in between."""
    _, bucket, key = split(location)
    try:
        done = s3_client(settings).put_object(
            Bucket=bucket, Key=key, Body=data, IfMatch=f'"{etag}"'
        )
    except Exception as err:
        if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "NoSuchKey"):
            return None
        raise StorageError(explain(err, location)) from err
    return str(done["ETag"]).strip('"')


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def explain(err: BaseException, location: str) -> str:
    """What an object-store error means for the user, naming the URL and the fix."""
    code, text = _code(err), str(err)
    if code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text:
        return f"{location}: the bucket does not exist; create it or fix the URL"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or "InvalidAccessKeyId" in text:
        return (
            f"{location}: the credentials were refused ({code or 'invalid key'}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for this store"
        )
    if code == "403":  # a HEAD's answer has no body: a wrong key and a denial look the same
        return (
            f"{location}: access denied (403); check that AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY are this store's and may read it"
        )
    if code == "AccessDenied" or "ACCESS_DENIED" in text or "AccessDenied" in text:
        return (
            f"{location}: access denied; grant the credentials in AWS_ACCESS_KEY_ID read (and, "
            "for an output, write) on it"
        )
    if (
        "Could not connect" in text
        or "Connection refused" in text
        or "EndpointConnectionError" in text
    ):
        return (
            f"{location}: cannot reach the store ({text[:120]}); check storage.endpoint_url "
            "or AWS_ENDPOINT_URL"
        )
    return f"{location}: {text}"


def parquet_metadata(location: str, settings: StorageSettings) -> pq.FileMetaData:
    """A Parquet file's footer: its schema and row count, without reading a page."""
    if is_remote(location):
        with open_input(location, settings) as f:
            return pq.read_metadata(f)
    return pq.read_metadata(location)


def read_parquet(location: str, settings: StorageSettings, columns: list[str]) -> pa.Table:
    if is_remote(location):
        with open_input(location, settings) as f:
            return pq.read_table(f, columns=columns)
    return pq.read_table(location, columns=columns)


def age(location: str, settings: StorageSettings) -> tuple[str, float] | None:
    """(ETag, seconds since it was last written, by the store's own clock) of an S3 object, or
    None where there is none: two drivers' clocks never need to agree."""
    head = _head(location, settings)
    if head is None:
        return None
    from email.utils import parsedate_to_datetime

    now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
    return head["ETag"].strip('"'), (now - head["LastModified"]).total_seconds()


def _head(location: str, settings: StorageSettings) -> dict[str, Any] | None:
    """S3's HeadObject answer for an object, or None where there is none."""
    _, bucket, key = split(location)
    try:
        head: dict[str, Any] = s3_client(settings).head_object(Bucket=bucket, Key=key)
    except Exception as err:
        if _code(err) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise StorageError(explain(err, location)) from err
    return head
