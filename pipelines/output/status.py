"""`embedpipe status OUT`: what a run has done, from its state files alone (no Ray, no data).

The tasks come from the plan the last run saved, so status works while a run is going, after it
was killed, and on a copy of the output.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.output.fingerprint import FINGERPRINT_FILE
from pipelines.output.markers import totals
from pipelines.output.run_figures import RunFigures, run_figures, summary_lines
from pipelines.output.state import RunState, StateError
from pipelines.storage.settings import StorageSettings


def status_of(out: str, storage: StorageSettings | None = None) -> tuple[str, RunFigures]:
    """What `status` prints, and the figures `status --plot` draws, from one read of the
    markers (a million of them in a bucket take minutes to list and read)."""
    state = RunState(out, storage)
    stored = state.tree.read_text(FINGERPRINT_FILE)
    if stored is None:
        raise StateError(f"{out} holds no embedpipe run ({FINGERPRINT_FILE} is missing)")
    model = json.loads(stored)["model"]
    planned = {entry["task"] for entry in state.plan()}
    total = len(planned)
    done, failed = state.settled(planned)
    counts = totals(done)
    lines = [
        f"{out}: {'complete' if state.succeeded() else 'not complete'}",
        f"tasks: {len(done)} done, {len(failed)} failed, {total - len(done) - len(failed)} "
        f"remaining of {total}",
        f"{_unit(counts)}: {counts['rows_embedded']:,} embedded, "
        f"{counts['rows_from_cache']:,} from cache, {counts['rows_deduplicated']:,} "
        f"deduplicated, {counts['rows_rejected']:,} rejected; tokens: {counts['tokens']:,}",
        f"model: {model['source']} (sha256 {model['onnx_sha256'][:12]})",
    ]
    figures = run_figures(done, failed, state.started_at())
    lines += summary_lines(figures)
    left = total - len(done) - len(failed)
    if left and not state.succeeded() and (eta := _eta(figures, left)) is not None:
        lines.append(f"at this pace the {left} remaining task(s) take about {eta}")
    for task_id, marker in failed.items():
        lines.append(
            f"failed {task_id} ({marker.file}, rows {marker.rows[0]}-{marker.rows[1]}, "
            f"{_attempts(marker.attempts)}): {marker.message}"
        )
    return "\n".join(lines), figures


def _eta(figures: RunFigures, left: int) -> str | None:
    """The remaining tasks at the pace of the tasks done since this run started."""
    if figures.span_s <= 0 or not figures.tasks_timed:
        return None
    seconds = figures.span_s / figures.tasks_timed * left
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _unit(counts: dict[str, Any]) -> str:
    """What the counts count: rows, or under embedding.chunking chunks (and how many written)."""
    written = counts["chunks_written"]
    return f"chunks ({written:,} written)" if written else "rows"
