"""`embedpipe serve CONF key=value` as a user starts it: a process that serves until Ctrl-C.

Its own module: the command starts its own Ray, which must not share the machine's two cores with
the Ray Serve of test_serve.py's module fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipelines.helpers import free_port, post, wait_healthy


def serve_command(tmp_path, minilm_dir, *more: str) -> tuple[subprocess.Popen, str]:
    """`embedpipe serve` started as a user starts it (`more`: overrides), logging to
    tmp_path/serve.log."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token a line\nfile-token\n\n")
    conf = tmp_path / "serve.yaml"
    # serve's sections only: no batch job's input or output
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\nworkers: {{device: cpu, cpus_per_actor: 1}}\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "serve", str(conf)]
    overrides = [f"serve.port={port}", f"serve.api_tokens={tokens}"]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [*command, *overrides, *more], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_the_serve_command_serves_until_ctrl_c(tmp_path, minilm_dir):
    proc, url = serve_command(tmp_path, minilm_dir)
    try:
        wait_healthy(url, alive=lambda: proc.poll() is None)
        body = json.dumps({"inputs": ["served"]}).encode()
        assert post(url, body)[0] == 401
        code, _, vectors = post(url, body, authorization="Bearer file-token")
        assert code == 200 and len(vectors) == 1 and len(vectors[0]) == 384
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "serving" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_ctrl_c_while_the_server_starts_stops_it_once_up(tmp_path, minilm_dir):
    """The signal is held while Serve starts, and stops the server once it is up."""
    proc, _ = serve_command(tmp_path, minilm_dir)
    try:
        wait_for_serving(proc, tmp_path / "serve.log")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_cuda_replicas_without_the_gpus_fail_at_once_naming_them(tmp_path, minilm_dir):
    """More CUDA replicas than the machine has GPUs (none here, one on the GPU machine)."""
    proc, _ = serve_command(tmp_path, minilm_dir, "workers.device=cuda", "serve.replicas=64")
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "serve.log").read_text()
    assert code == 1 and "GPU(s) for serve.replicas=64" in log, log


@pytest.mark.slow
def test_a_second_ctrl_c_stops_a_start_up_that_cannot_finish(tmp_path, minilm_dir):
    """A replica that asks more CPUs than the machine has is never placed, so Serve never
    comes up (a cluster's autoscaler could add them: this waits rather than fails)."""
    proc, _ = serve_command(tmp_path, minilm_dir, "workers.cpus_per_actor=64")
    try:
        wait_for_serving(proc, tmp_path / "serve.log")
        time.sleep(2)  # into Serve's start-up
        proc.send_signal(signal.SIGINT)
        time.sleep(2)
        assert proc.poll() is None, "the first signal waits for the start-up"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for_serving(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text():  # printed just before Serve starts
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
