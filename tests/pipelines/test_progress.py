import io

from pipelines.progress import Progress


def test_the_line_shows_rows_rate_eta_and_failures():
    progress = Progress(total_rows=1000, done_rows=200, stream=io.StringIO())
    progress.task_done(rows=300, tokens=6000)
    progress.task_failed()
    line = progress.line(elapsed=10.0)
    assert "500/1,000 rows" in line and "600 tokens/s" in line
    assert "ETA 0m16s" in line  # 300 rows in 10 s this run, 500 left
    assert "failures 1" in line and line.startswith("[############............]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_bar_and_a_final_newline():
    screen = Terminal()
    progress = Progress(total_rows=10, done_rows=0, stream=screen)
    progress.task_done(rows=10, tokens=100)
    progress.close()
    assert screen.getvalue().startswith("\r[########################] 10/10 rows")
    assert screen.getvalue().endswith("\n")
