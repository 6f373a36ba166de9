"""The chaos run (tests/chaos.py): random SIGKILLs of actors and of the driver change nothing.

`make chaos` runs the same harness longer (more tasks, more kills). Each `embedpipe run` here is
its own process with its own embedded Ray, so this module needs no Ray of its own.
"""

from __future__ import annotations

import random

import pytest

from tests.chaos import chaos


@pytest.mark.slow
def test_a_run_killed_eight_times_equals_a_clean_run(tmp_path, minilm_dir):
    seed = random.randrange(1 << 30)
    report = chaos(minilm_dir, tmp_path, tasks=40, kills=8, seed=seed)
    facts = f"seed {seed}: {report.summary()}"
    assert report.tasks >= 36, facts
    assert len(report.kills) >= 8 and report.driver_kills >= 2, facts
    assert report.runs >= report.driver_kills + 1, facts  # each driver kill needs one more run
    assert report.rows_checked >= 360, facts
    assert report.rows_lost == 0 and report.rows_duplicated == 0, facts
    assert report.files_compared >= 36 and report.files_differing == [], facts
    assert report.temporary_files == [] and report.success_marker, facts


@pytest.mark.slow
def test_a_chunked_run_killed_four_times_has_each_chunk_once(tmp_path, minilm_dir):
    """embedding.chunking: a task's rows are its texts' chunks; kills lose or double none."""
    seed = random.randrange(1 << 30)
    report = chaos(minilm_dir, tmp_path, tasks=18, kills=4, seed=seed, chunked=True)
    facts = f"seed {seed}: {report.summary()}"
    # 130 input rows, most docstrings several 64-token chunks
    assert len(report.kills) >= 4 and report.rows_checked >= 180, facts
    assert report.rows_lost == 0 and report.rows_duplicated == 0, facts
    assert report.files_compared >= 14 and report.files_differing == [], facts
    assert report.temporary_files == [] and report.success_marker, facts
