"""A disk that fills up or turns read-only in the middle of a run loses nothing.

The fault comes from the writers' fault hook (pipelines/faults.py): EMBEDPIPE_FAULTS names a
control file that the test writes in the middle of the run, and every actor and the driver see
it at their next write; the write fails after its temporary file was written, as a full disk
reports it at close or fsync.
"""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines.output.state import RunState
from tests.chaos import build_corpus, end_session, start_run, write_config
from tests.pipelines.helpers import assert_consistent, wait_for_done_markers


@pytest.fixture
def faulty_run(tmp_path, minilm_dir):
    rows = build_corpus(tmp_path / "in", tasks=24)
    out = tmp_path / "out"
    conf = write_config(tmp_path / "job.yaml", minilm_dir, tmp_path / "in", out, "max_retries: 1")
    control = tmp_path / "faults"
    env = {"EMBEDPIPE_FAULTS": str(control)}

    def run(fault: str, after_done: int = 3) -> tuple[int, str]:
        log = tmp_path / "run.log"
        proc = start_run(conf, log, env)
        try:
            wait_for_done_markers(out, after_done, lambda: proc.poll() is None)
            control.write_text(fault)
            code = proc.wait(timeout=300)
        finally:
            end_session(proc)
        return code, log.read_text()

    def rerun_after_clearing() -> None:
        control.unlink()
        proc = start_run(conf, tmp_path / "rerun.log", env)
        try:
            assert proc.wait(timeout=300) == 0
        finally:
            end_session(proc)
        parts = pl.read_parquet(out / "part-*.parquet")
        rejects = pl.read_parquet(out / "_rejects" / "*.parquet")
        assert parts["id"].n_unique() == len(parts) and len(parts) + len(rejects) == rows
        assert (out / "_SUCCESS").exists()

    return out, run, rerun_after_clearing


def assert_nothing_half_written(out):
    assert not list(out.rglob(".*.tmp-*"))
    assert_consistent(out)
    for part in out.rglob("*.parquet"):
        pq.read_metadata(part)  # every visible file is a whole Parquet file


@pytest.mark.slow
def test_a_full_disk_fails_the_tasks_with_path_and_error_and_a_rerun_completes(faulty_run):
    out, run, rerun_after_clearing = faulty_run
    code, printed = run("ENOSPC */part-*")
    assert code == 1 and "failed" in printed
    failed = RunState(out).failed()
    assert failed, "no task met the full disk"
    for task_id, marker in failed.items():
        assert marker.attempts == 2  # retried once (run.max_retries: 1), then failed
        assert "[Errno 28] No space left on device" in marker.message
        assert f"{out}/" in marker.message and task_id in marker.message
    assert not (out / "_SUCCESS").exists()
    assert_nothing_half_written(out)
    rerun_after_clearing()
    assert RunState(out).failed() == {}  # redone, and their failure markers removed


@pytest.mark.slow
def test_a_read_only_output_stops_the_run_naming_the_path_and_a_rerun_completes(faulty_run):
    out, run, rerun_after_clearing = faulty_run
    code, printed = run("EACCES *")
    assert code == 2
    assert f"cannot write the run state at {out}/_state/" in printed
    assert "Permission denied" in printed
    assert_nothing_half_written(out)
    rerun_after_clearing()
