"""Helpers shared by the pipelines tests: watching a real run's output, and talking HTTP to a
served endpoint. Not a test module; the run harness itself (corpus, config, processes) is
tests/chaos.py."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from workers.files import sha256_file

# the entrypoint of the README's Ray job recipe, as a user types it: the `python` on the PATH
# of the environment Ray was started from (test_ray_job.py submits it)
README_ENTRYPOINT = ["python", "-m", "pipelines.cli", "run"]

# a run's output


def wait_for_done_markers(
    out: Path, count: int, running: Callable[[], bool] | None = None, timeout_s: float = 180
) -> int:
    """Wait for `count` done markers; running (the run's thread or process) says when the run
    has ended, so a run that died early fails here at once, not after timeout_s."""
    done = out / "_state" / "done"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ended = running is not None and not running()  # read before the count: no race
        found = len(list(done.glob("*.json"))) if done.is_dir() else 0
        if found >= count:
            return found
        if ended:
            raise AssertionError(f"the run ended with {found} tasks done, before {count}")
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


def wait_listening(host: str, port: int, timeout_s: float = 60) -> None:
    """Until something accepts connections on host:port (a server started as a process)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout_s} s")


def post(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], object]:
    headers = {"content-type": "application/json", **headers}
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET url: status, headers and the body as it came."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


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


# an object store that throttles


class ThrottlingProxy:
    """An HTTP proxy in front of the local S3 API that answers every `every`-th request with
    503 SlowDown, as S3 does under load; counts what it refused. Clients must retry."""

    def __init__(self, upstream: str, every: int = 3) -> None:
        import http.server
        import threading

        proxy = self
        self.upstream, self.every, self.seen, self.refused = upstream, every, 0, 0
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue, as S3 does

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.forward(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, handler) -> None:
        with self._lock:
            self.seen += 1
            refuse = self.seen % self.every == 0
            self.refused += refuse
        body = read_body(handler)
        if refuse:
            slow = (
                b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            )
            handler.send_response(503)
            handler.send_header("Content-Length", str(len(slow)))
            handler.send_header("Content-Type", "application/xml")
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(slow)
            return
        skip = ("host", "transfer-encoding", "expect", "content-length")
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in skip}
        # urllib would call a body form data, and the server would parse it away
        headers.setdefault("Content-Type", "binary/octet-stream")
        request = urllib.request.Request(
            self.upstream + handler.path, data=body, headers=headers, method=handler.command
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, reply, data = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as err:
            status, reply, data = err.code, err.headers, err.read()
        handler.send_response(status)
        for key, value in reply.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        # a HEAD answer has no body but the length of the one a GET would have
        length = reply.get("Content-Length") if handler.command == "HEAD" else None
        handler.send_header("Content-Length", length or str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()


def read_body(handler) -> bytes | None:
    """A request's body, sent with a length or chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else None
