"""The README's Ray job recipe against a real head node with token authentication: Ray started
from embedpipe's environment, then `ray job submit --working-dir . -- python -m pipelines.cli
run CONF`.

Kept in its own module: `ray stop` ends every Ray process of this machine, so no in-process Ray
of another test module may be running while this one does.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.output.state import RunState
from tests.pipelines.helpers import README_ENTRYPOINT

# A `ray start` head is the cluster any other driver on the machine joins without an address,
# and `ray stop` ends every Ray here: `make test` runs this module by itself, after the others.
pytestmark = pytest.mark.alone

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def head_node():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # As the README's recipe says: Ray started from the environment embedpipe is installed in
    # (activated: its bin first on PATH), so the entrypoint's `python` is that one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parents[1])
    # Ray 2.59+ authenticates local clusters by default: head and submitter share one token,
    # as on a real cluster.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    dashboard = free_port()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={free_port()}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_a_submitted_job_embeds_the_corpus(head_node, tmp_path, minilm_dir):
    address, env = head_node
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "docs.jsonl").write_text(
        "".join(f'{{"id": "d{i}", "text": "document number {i}"}}\n' for i in range(50))
    )
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 20}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1}\n"
    )
    job = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            f"--address={address}",
            "--working-dir",
            str(REPO),
            "--",
            *README_ENTRYPOINT,
            str(conf),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "3/3 tasks done" in job.stdout
    assert (tmp_path / "out" / "_SUCCESS").exists()
    done = RunState(tmp_path / "out").done()
    assert sum(m.embedded for m in done.values()) == 50
