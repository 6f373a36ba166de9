"""Helpers shared by the pipelines tests: watching a real run's output, and talking HTTP to a
served endpoint. Not a test module; the run harness itself (corpus, config, processes) is
tests/chaos.py."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from workers.files import sha256_file

# a run's output


def wait_for_done_markers(out: Path, count: int, timeout_s: float = 180) -> int:
    done = out / "_state" / "done"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = len(list(done.glob("*.json"))) if done.is_dir() else 0
        if found >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} tasks done after {timeout_s} s")


def assert_consistent(out: Path) -> dict[str, dict]:
    """Every done marker names files that exist with the hash it recorded."""
    markers = {p.stem: json.loads(p.read_text()) for p in (out / "_state" / "done").glob("*.json")}
    for marker in markers.values():
        for file in marker["files"]:
            assert sha256_file(out / file["path"]) == file["sha256"]
    return markers


# a served endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], object]:
    headers = {"content-type": "application/json", **headers}
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_healthy(url: str, timeout_s: float = 180, alive=lambda: True) -> None:
    """Polls /health until the server is ready; `alive` says the serving process still runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if get_json(url + "/health")[0] == 200:
                return
        except (OSError, ValueError):
            pass  # not listening yet, or the proxy's plain-text answer before the app is up
        assert alive(), "the server process ended"
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.5)
