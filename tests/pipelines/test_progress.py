import io

from pipelines.batch.progress import Progress
from pipelines.output.markers import DoneMarker


def done(rows: int, tokens: int, from_cache: int = 0, deduplicated: int = 0) -> DoneMarker:
    return DoneMarker(
        task_id="t",
        input_key="in.csv",
        input_size=1,
        rows=rows,
        embedded=rows - from_cache - deduplicated,
        rejected=0,
        tokens=tokens,
        seconds={},
        from_cache=from_cache,
        deduplicated=deduplicated,
    )


def test_the_line_shows_rows_rate_eta_and_failures():
    progress = Progress(total_rows=1000, done_rows=200, stream=io.StringIO())
    progress.task_done(done(rows=300, tokens=6000))
    progress.task_failed()
    line = progress.line(elapsed=10.0)
    assert "500/1,000 rows" in line and "600 tokens/s" in line
    assert "ETA 0m16s" in line  # 300 rows in 10 s this run, 500 left
    assert "failures 1" in line and line.startswith("[############............]")
    assert "cache" not in line  # nothing reused: nothing to say


def test_the_line_shows_rows_copied_from_the_cache_and_deduplicated():
    progress = Progress(total_rows=5000, done_rows=0, stream=io.StringIO())
    progress.task_done(done(rows=2000, tokens=900, from_cache=1500, deduplicated=120))
    progress.task_done(done(rows=1000, tokens=100, from_cache=700, deduplicated=3))
    assert "from cache 2,200  deduplicated 123" in progress.line(elapsed=1.0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_bar_and_a_final_newline():
    screen = Terminal()
    progress = Progress(total_rows=10, done_rows=0, stream=screen)
    progress.task_done(done(rows=10, tokens=100))
    progress.close()
    assert screen.getvalue().startswith("\r[########################] 10/10 rows")
    assert screen.getvalue().endswith("\n")


def test_a_log_repeats_no_unchanged_line_but_beats_each_minute(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr("pipelines.batch.progress.time.monotonic", lambda: clock[0])
    progress = Progress(total_rows=10, done_rows=0, stream=io.StringIO(), interval_s=5)
    with caplog.at_level("INFO", logger="embedpipe.progress"):
        for _ in range(13):  # 65 s of ticks, 5 s apart, with nothing done
            clock[0] += 5
            progress.tick()
        assert len(caplog.records) == 2  # the first line, then the heartbeat at 60 s
        progress.task_done(done(rows=4, tokens=40))
        clock[0] += 5
        progress.tick()
        assert len(caplog.records) == 3 and "4/10 rows" in caplog.records[-1].getMessage()
