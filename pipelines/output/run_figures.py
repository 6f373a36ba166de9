"""A run's figures from its markers alone: rows and tokens per second over time, seconds per
stage, retries and failures, and the token-length histogram of the rows written.

What `embedpipe status` prints (while a run goes, too), what report.json's `figures` holds and
what charts.py draws into `_state/report.png`. Every figure comes from the done and failed
markers, which each task writes once, so reading them costs no data and never disturbs a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.output.markers import DoneMarker, FailedMarker

TOKEN_BINS = 32  # equal bins over [0, max_seq_length], then one for longer (pooled rows)
TIMELINE_POINTS = 60  # at most, over the run's span


def token_histogram(n_tokens: np.ndarray, max_tokens: int) -> tuple[int, ...]:
    """Counts of n_tokens in TOKEN_BINS equal bins over [0, max_tokens] (the last one closed),
    then the rows over max_tokens (a pooled text sums its chunks' tokens)."""
    edges = np.linspace(0, max(max_tokens, 1), TOKEN_BINS + 1)
    inside = np.histogram(np.minimum(n_tokens, max_tokens), bins=edges)[0]
    over = int((n_tokens > max_tokens).sum())
    inside[-1] -= over
    return (*(int(c) for c in inside), over)


@dataclass(frozen=True)
class Timeline:
    """Done tasks' rows and tokens, binned by when they finished: per second of each bin."""

    seconds: tuple[float, ...]  # each bin's end, from the first task's start
    rows_per_s: tuple[float, ...]
    tokens_per_s: tuple[float, ...]


@dataclass(frozen=True)
class RunFigures:
    tasks_done: int
    tasks_failed: int
    tasks_timed: int  # done since the run started, with the time they finished
    tasks_retried: int  # done after more than one attempt
    retries: int  # attempts beyond the first, over done and failed tasks
    rows: int
    tokens: int
    span_s: float  # from the first recorded task's start to the last one's end
    rows_per_s: float | None
    tokens_per_s: float | None
    seconds_per_stage: dict[str, float]
    token_max: int  # the histogram's range: the model's max_seq_length
    token_counts: tuple[int, ...]  # TOKEN_BINS + 1, as token_histogram
    timeline: Timeline

    def token_quantile(self, q: float) -> float | None:
        """The q-quantile of n_tokens from the histogram, to its bin's upper edge."""
        counts = np.asarray(self.token_counts, np.int64)
        if counts.sum() == 0:
            return None
        at = int(np.searchsorted(np.cumsum(counts), q * counts.sum()))
        if at >= TOKEN_BINS:
            return float("inf")
        return float(self.token_max * (at + 1) / TOKEN_BINS)

    def as_dict(self) -> dict[str, object]:
        """report.json's `figures` (README: "What a run reports")."""
        return {
            "tasks_done": self.tasks_done,
            "tasks_failed": self.tasks_failed,
            "tasks_retried": self.tasks_retried,
            "retries": self.retries,
            "rows_per_s": _round(self.rows_per_s),
            "tokens_per_s": _round(self.tokens_per_s),
            "span_s": round(self.span_s, 3),
            "seconds_per_stage": {k: round(v, 3) for k, v in self.seconds_per_stage.items()},
            "token_histogram": {"max": self.token_max, "counts": list(self.token_counts)},
            "timeline": {
                # six significant digits, not fixed decimals: a short run's bins are a fraction
                # of a second wide, and rate times width must still give back the rows
                "seconds": [_significant(s) for s in self.timeline.seconds],
                "rows_per_s": [_significant(r) for r in self.timeline.rows_per_s],
                "tokens_per_s": [_significant(t) for t in self.timeline.tokens_per_s],
            },
        }


def run_figures(
    done: dict[str, DoneMarker], failed: dict[str, FailedMarker], since: float = 0.0
) -> RunFigures:
    """Figures over the done markers (rates and the timeline only over those finished at or
    after `since`, the Unix time the current run started; 0: all that record a time)."""
    markers = list(done.values())
    timed = [m for m in markers if m.finished and m.finished >= since]
    stages: dict[str, float] = {}
    for marker in markers:
        for stage, secs in marker.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + secs
    token_max = max((m.token_max for m in markers), default=0)
    counts = np.zeros(TOKEN_BINS + 1, np.int64)
    for marker in markers:
        if marker.token_counts and marker.token_max == token_max:
            counts += np.asarray(marker.token_counts, np.int64)
    timeline, span = _timeline(timed)
    rows, tokens = sum(m.rows for m in timed), sum(m.tokens for m in timed)
    return RunFigures(
        tasks_done=len(markers),
        tasks_failed=len(failed),
        tasks_timed=len(timed),
        tasks_retried=sum(m.attempts > 1 for m in markers),
        retries=sum(m.attempts - 1 for m in markers) + sum(f.attempts - 1 for f in failed.values()),
        rows=sum(m.rows for m in markers),
        tokens=sum(m.tokens for m in markers),
        span_s=span,
        rows_per_s=rows / span if span > 0 else None,
        tokens_per_s=tokens / span if span > 0 else None,
        seconds_per_stage=stages,
        token_max=token_max,
        token_counts=tuple(int(c) for c in counts),
        timeline=timeline,
    )


def _timeline(timed: list[DoneMarker]) -> tuple[Timeline, float]:
    if not timed:
        return Timeline((), (), ()), 0.0
    ends = np.array([m.finished for m in timed])
    starts = ends - np.array([_task_seconds(m) for m in timed])
    origin = float(starts.min())
    span = float(ends.max()) - origin
    bins = max(1, min(TIMELINE_POINTS, len(timed)))
    edges = np.linspace(0.0, max(span, 1e-9), bins + 1)
    at = np.clip(np.searchsorted(edges, ends - origin, side="left") - 1, 0, bins - 1)
    width = edges[1] - edges[0]
    rows = np.bincount(at, [m.rows for m in timed], bins) / width
    tokens = np.bincount(at, [m.tokens for m in timed], bins) / width
    return Timeline(tuple(edges[1:].tolist()), tuple(rows.tolist()), tuple(tokens.tolist())), span


def _task_seconds(marker: DoneMarker) -> float:
    """A task's own time: reading, embedding (which holds the device time) and writing."""
    return sum(v for k, v in marker.seconds.items() if k != "device")


def _significant(value: float) -> float:
    return float(f"{value:.6g}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary_lines(figures: RunFigures) -> list[str]:
    """The figures in a few lines, for `embedpipe status` and the run's log."""
    lines = []
    if figures.rows_per_s is not None and figures.tokens_per_s is not None:
        lines.append(
            f"throughput: {figures.rows_per_s:,.1f} rows/s, {figures.tokens_per_s:,.0f} "
            f"tokens/s over {figures.span_s:,.1f} s of tasks"
        )
    if figures.seconds_per_stage:
        stages = ", ".join(f"{k} {v:,.1f} s" for k, v in figures.seconds_per_stage.items())
        lines.append(f"task seconds by stage: {stages}")
    lines.append(
        f"retries: {figures.retries} ({figures.tasks_retried} task(s) done after a retry, "
        f"{figures.tasks_failed} failed)"
    )
    p50, p90 = figures.token_quantile(0.5), figures.token_quantile(0.9)
    if p50 is not None and p90 is not None:
        lines.append(
            f"tokens per row written: p50 <= {p50:,.0f}, p90 <= {p90:,.0f} (max_seq_length "
            f"{figures.token_max})"
        )
    return lines
