"""Run state: the fingerprint guard, the lock, and markers."""

import json

import pytest

from pipelines.output.markers import DoneMarker, FailedMarker
from pipelines.output.state import RunState, StateError

FINGERPRINT = {"model": {"sha256": "aaa", "dim": 384}, "options": {"normalize": True}}


def test_first_run_writes_the_fingerprint_and_the_same_one_passes(tmp_path):
    RunState(tmp_path).check_fingerprint(FINGERPRINT)
    RunState(tmp_path).check_fingerprint(FINGERPRINT)
    assert (tmp_path / "_embedpipe.json").exists()


def test_another_model_or_option_is_refused_saying_what_differs(tmp_path):
    RunState(tmp_path).check_fingerprint(FINGERPRINT)
    other = {**FINGERPRINT, "options": {"normalize": False}}
    with pytest.raises(StateError, match=r"options\.normalize: true here, false now"):
        RunState(tmp_path).check_fingerprint(other)
    other = {**FINGERPRINT, "model": {"sha256": "bbb", "dim": 384}}
    with pytest.raises(StateError, match=r"model\.sha256"):
        RunState(tmp_path).check_fingerprint(other)


def test_a_second_run_on_a_held_output_is_refused(tmp_path):
    first = RunState(tmp_path)
    first.acquire()
    with pytest.raises(StateError, match=r"in use by another run.*pid"):
        RunState(tmp_path).acquire()
    first.release()
    second = RunState(tmp_path)
    second.acquire()
    second.release()


def test_done_clears_failed_and_markers_read_back(tmp_path):
    state = RunState(tmp_path)
    failed = FailedMarker("t1", "in.csv", (0, 5), "ValueError", "boom", "trace", 1)
    state.mark_failed(failed)
    assert state.failed() == {"t1": failed}
    done = DoneMarker("t1", "in.csv", 10, rows=5, embedded=5, rejected=0, tokens=40)
    state.mark_done(done)
    assert state.done() == {"t1": done} and state.failed() == {}


def test_a_marker_written_before_the_reindex_and_oom_fields_reads_with_them_at_zero(tmp_path):
    old = {"input": {"key": "a.csv", "size": 3}, "rows": 2, "embedded": 2, "rejected": 0}
    (tmp_path / "_state" / "done").mkdir(parents=True)
    (tmp_path / "_state" / "done" / "t1.json").write_text(json.dumps({**old, "tokens": 9}))
    marker = RunState(tmp_path).done()["t1"]
    assert (marker.from_cache, marker.deduplicated, marker.oom_splits, marker.files) == (
        0,
        0,
        0,
        (),
    )


def test_a_changed_input_listing_is_named_by_entry(tmp_path):
    state = RunState(tmp_path)
    state.check_fingerprint({"inputs": [{"key": "a.csv"}, {"key": "b.csv"}]})
    with pytest.raises(StateError, match=r'inputs\[1\]\.key: "b.csv" here, "c.csv" now'):
        state.check_fingerprint({"inputs": [{"key": "a.csv"}, {"key": "c.csv"}]})
    with pytest.raises(StateError, match="inputs: 2 entries here, 3 now"):
        state.check_fingerprint({"inputs": [{"key": "a.csv"}, {"key": "b.csv"}, {"key": "d"}]})
