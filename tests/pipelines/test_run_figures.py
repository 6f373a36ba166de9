"""The run's figures from markers alone, and a run without matplotlib: it completes, and says how
to get the picture."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from pipelines.batch.run import draw_report
from pipelines.cli import main
from pipelines.output.markers import DoneMarker, FailedMarker
from pipelines.output.run_figures import TOKEN_BINS, run_figures, token_histogram
from pipelines.output.state import RunState


def marker(task: str, finished: float, rows: int, attempts: int = 1) -> DoneMarker:
    counts = token_histogram(np.full(rows, 40), 256)
    return DoneMarker(
        task, "k", 1, rows, rows, 0, rows * 40, {"read": 1.0, "embed": 9.0, "device": 8.0},
        finished=finished, attempts=attempts, token_counts=counts, token_max=256,
    )  # fmt: skip


def test_the_histogram_bins_tokens_up_to_max_seq_length_and_counts_longer_rows_apart():
    counts = token_histogram(np.array([1, 8, 9, 255, 256, 300, 1000]), 256)
    assert len(counts) == TOKEN_BINS + 1
    assert counts[0] == 1 and counts[1] == 2  # bins of 8 tokens: [0, 8), [8, 16)
    assert counts[TOKEN_BINS - 1] == 2  # 255 and 256: the last bin is closed
    assert counts[TOKEN_BINS] == 2  # pooled rows over max_seq_length


def test_rates_count_only_this_runs_tasks_and_retries_count_every_attempt():
    done = {
        "old": marker("old", 100.0, 1000),  # done by an earlier run
        "a": marker("a", 1010.0, 100),  # started at 1000 (its 10 s of read and embed)
        "b": marker("b", 1020.0, 300, attempts=3),
    }
    failed = {"c": FailedMarker("c", "f", (0, 5), "ValueError", "bad", "", 4)}
    figures = run_figures(done, failed, since=1000.0)
    assert figures.span_s == pytest.approx(20.0)
    assert figures.rows_per_s == pytest.approx(400 / 20)
    assert figures.tokens_per_s == pytest.approx(400 * 40 / 20)
    assert (figures.tasks_done, figures.tasks_timed, figures.tasks_retried) == (3, 2, 1)
    assert figures.retries == 2 + 3
    assert figures.seconds_per_stage == {"read": 3.0, "embed": 27.0, "device": 24.0}
    assert sum(figures.token_counts) == 1400 and figures.token_quantile(0.5) == 48.0


def test_a_short_runs_timeline_in_report_json_gives_back_its_rows():
    # four tasks of ~0.23 s: bins a fraction of a second wide, where rounding the JSON to
    # fixed decimals lost a percent of the rows (CI, stop 28)
    seconds = {"read": 0.013, "embed": 0.2187}
    done = {
        f"t{i}": DoneMarker(
            f"t{i}", "k", 1, 30, 30, 0, 1200, seconds, finished=1000.2317 + 0.2331 * i
        )
        for i in range(4)
    }
    timeline = run_figures(done, {}, since=1000.0).as_dict()["timeline"]
    assert isinstance(timeline, dict)
    width = timeline["seconds"][0]
    assert sum(timeline["rows_per_s"]) * width == pytest.approx(120, rel=1e-4)
    assert sum(timeline["tokens_per_s"]) * width == pytest.approx(4800, rel=1e-4)


def test_without_matplotlib_the_report_is_skipped_with_how_to_get_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    state = RunState(tmp_path)
    figures = run_figures({"a": marker("a", 10.0, 5)}, {})
    with caplog.at_level(logging.INFO):
        assert draw_report(state, figures) is None
    assert "pip install 'embedpipe[plot]'" in caplog.text
    assert not (tmp_path / "_state" / "report.png").exists()


def test_status_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    (tmp_path / "_embedpipe.json").write_text('{"model": {"source": "m", "onnx_sha256": "ab"}}')
    assert main(["status", str(tmp_path), "--plot", str(tmp_path / "x.png")]) == 1
    assert "pip install 'embedpipe[plot]'" in capsys.readouterr().err


def test_status_plot_reads_the_markers_once(tmp_path, monkeypatch):
    # A million markers in a bucket take minutes to list and read: the text and the picture
    # come from one pass.
    (tmp_path / "_embedpipe.json").write_text('{"model": {"source": "m", "onnx_sha256": "ab"}}')
    passes = []
    settled = RunState.settled
    monkeypatch.setattr(
        RunState, "settled", lambda self, planned: passes.append(1) or settled(self, planned)
    )
    assert main(["status", str(tmp_path), "--plot", str(tmp_path / "x.png")]) == 0
    assert len(passes) == 1 and (tmp_path / "x.png").stat().st_size > 0
