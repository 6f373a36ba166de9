"""Pictures: the plan's token-length histogram and a run's report, as PNG bytes.

matplotlib is an optional extra (`pip install 'embedpipe[plot]'`): without it nothing here is
imported, runs complete as before, and `ChartsUnavailable` says how to get the pictures. Only
the Agg backend is used, so no display is needed (a cluster's head, CI).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.output.run_figures import TOKEN_BINS, RunFigures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL = "pip install 'embedpipe[plot]' (matplotlib)"


class ChartsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to install it."""


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Figure, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ChartsUnavailable(f"the pictures need matplotlib: {INSTALL}") from err
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def token_lengths_png(
    lengths: np.ndarray, weights: np.ndarray, max_seq_length: int, title: str
) -> bytes:
    """A histogram of texts' token lengths (each weighted by the rows it stands for), with the
    model's max_seq_length marked: what lies right of the line is cut, rejected or chunked."""
    figure, axes = _figure(1, 1, (8, 4.5))
    ax = axes[0][0]
    top = max(float(lengths.max()) if len(lengths) else 1.0, max_seq_length * 1.1)
    ax.hist(lengths, bins=np.linspace(0, top, 61), weights=weights, color="#4C72B0")
    ax.axvline(max_seq_length, color="#C44E52", linestyle="--")
    ax.annotate(
        f"max_seq_length {max_seq_length}",
        (max_seq_length, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -14),
        textcoords="offset points",
        color="#C44E52",
    )
    ax.set_xlabel("tokens per text (special tokens and prompt included)")
    ax.set_ylabel("rows (estimated)")
    ax.set_title(title)
    return _png(figure)


def run_report_png(figures: RunFigures, title: str) -> bytes:
    """Four panels: rows and tokens per second over time, task seconds by stage, tasks done at
    once / after retries / failed, and the token-length histogram of the rows written."""
    figure, axes = _figure(2, 2, (12, 8))
    figure.suptitle(title)
    _throughput(axes[0][0], figures)
    _stages(axes[0][1], figures)
    _outcomes(axes[1][0], figures)
    _tokens(axes[1][1], figures)
    return _png(figure)


def _throughput(ax: Any, figures: RunFigures) -> None:
    line = figures.timeline
    ax.set_title("throughput over time")
    ax.set_xlabel("seconds since the first task started")
    if not line.seconds:
        ax.text(0.5, 0.5, "no task recorded its time", ha="center", transform=ax.transAxes)
        return
    # each bin's rate drawn over the whole bin, from 0 (the first task's start)
    seconds = [0.0, *line.seconds]
    ax.step(seconds, [line.rows_per_s[0], *line.rows_per_s], color="#4C72B0", linewidth=2.5)
    ax.set_ylabel("rows/s (solid)", color="#4C72B0")
    ax.set_xlim(left=0)
    twin = ax.twinx()
    tokens = [line.tokens_per_s[0], *line.tokens_per_s]
    twin.step(seconds, tokens, color="#DD8452", linestyle="--")
    twin.set_ylabel("tokens/s (dashed)", color="#DD8452")


def _stages(ax: Any, figures: RunFigures) -> None:
    stages = figures.seconds_per_stage
    ax.set_title("task seconds by stage (device is part of embed)")
    ax.bar(list(stages), list(stages.values()), color="#55A868")
    ax.set_ylabel("seconds, summed over tasks")


def _outcomes(ax: Any, figures: RunFigures) -> None:
    first_try = figures.tasks_done - figures.tasks_retried
    counts = [first_try, figures.tasks_retried, figures.tasks_failed]
    ax.set_title(f"tasks ({figures.retries} retries in all)")
    bars = ax.bar(["done", "done after retries", "failed"], counts)
    for bar, colour in zip(bars, ["#55A868", "#DD8452", "#C44E52"], strict=True):
        bar.set_color(colour)
    ax.bar_label(bars)


def _tokens(ax: Any, figures: RunFigures) -> None:
    top = max(figures.token_max, 1)
    width = top / TOKEN_BINS
    counts = figures.token_counts[:TOKEN_BINS] if figures.token_counts else [0] * TOKEN_BINS
    lefts = np.arange(TOKEN_BINS) * width
    ax.bar(lefts, counts, width=width, align="edge", color="#4C72B0")
    over = figures.token_counts[TOKEN_BINS] if len(figures.token_counts) > TOKEN_BINS else 0
    ax.set_title(
        "tokens per row written" + (f" ({over:,} rows over {top}, pooled)" if over else "")
    )
    ax.axvline(top, color="#C44E52", linestyle="--")
    ax.set_xlabel(f"n_tokens (max_seq_length {top})")
    ax.set_ylabel("rows")
