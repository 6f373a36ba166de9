"""SIGINT and SIGTERM stop `embedpipe run` cleanly, and the next run resumes.

The run is a real `embedpipe run` process (with its own embedded Ray), signalled the way a
terminal's Ctrl-C or `ray job stop` would.
"""

from __future__ import annotations

import json
import signal

import polars as pl
import pytest

from tests.chaos import build_corpus, end_session, start_run, write_config
from tests.pipelines.helpers import assert_consistent, wait_for_done_markers


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_the_run_cleanly_and_the_next_run_resumes(
    tmp_path, minilm_dir, signum, code
):
    rows = build_corpus(tmp_path / "in", tasks=40)
    out = tmp_path / "out"
    conf = write_config(tmp_path / "job.yaml", minilm_dir, tmp_path / "in", out, "stop_grace_s: 30")
    log = tmp_path / "run.log"
    proc = start_run(conf, log)
    wait_for_done_markers(out, 3, lambda: proc.poll() is None)
    proc.send_signal(signum)
    try:
        assert proc.wait(timeout=60) == code
    finally:
        end_session(proc)
    printed = log.read_text()
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in printed and "run it again to resume" in printed
    report = json.loads((out / "_state" / "report.json").read_text())
    assert report["interrupted"] == name and report["tasks_failed"] == 0
    assert 3 <= report["tasks_done"] < report["tasks_total"]
    markers = assert_consistent(out)
    assert len(markers) == report["tasks_done"]  # the running tasks finished and were recorded
    assert not (out / "_SUCCESS").exists()
    # a temporary file that a killed writer left behind is swept by the next run
    (out / f".part-{next(iter(markers))}.parquet.tmp-99999").write_bytes(b"half a file")

    before = {p: p.stat().st_mtime_ns for p in (out / "_state" / "done").glob("*.json")}
    rerun = start_run(conf, log)
    try:
        assert rerun.wait(timeout=300) == 0
    finally:
        end_session(rerun)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # resumed, not redone
    assert (out / "_SUCCESS").exists() and not list(out.rglob(".*.tmp-*"))
    parts = pl.read_parquet(out / "part-*.parquet")
    rejects = pl.read_parquet(out / "_rejects" / "*.parquet")
    assert parts["id"].n_unique() == len(parts) and len(parts) + len(rejects) == rows
