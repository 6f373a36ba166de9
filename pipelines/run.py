"""`embedpipe run`: plan, take the output's lock, run the tasks not yet done, report.

A rerun trusts a done marker only while the files it names are still there, so deleting a part
file is enough to have its task redone. `_SUCCESS` is written last, and only when every task of
the plan is done.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipelines.cluster import connect, plan_actors, start_actors
from pipelines.config import Config
from pipelines.driver import Driver, collect_digests
from pipelines.ids import find_repeats
from pipelines.job import Job, prepare, save_resolved_config
from pipelines.planning import Task
from pipelines.progress import Progress
from pipelines.state import RunState, StateError, totals

log = logging.getLogger(__name__)


def run_job(config: Config) -> dict[str, Any]:
    started = time.monotonic()
    job = prepare(config)
    state = RunState(config.output.path)
    state.acquire()
    try:
        state.check_fingerprint(job.fingerprint)
        save_resolved_config(config, state.out)
        state.write_plan([_plan_entry(t) for t in job.tasks])
        state.clear_success()
        todo = pending(job, state)
        startup_s = run_tasks(job, state, todo) if todo else 0.0
        report = build_report(job, state, time.monotonic() - started, startup_s)
        state.write_report(report)
        if report["tasks_done"] == report["tasks_total"]:
            state.succeed()
        return report
    finally:
        state.release()


def pending(job: Job, state: RunState) -> list[Task]:
    done = state.done()
    return [t for t in job.tasks if not _still_done(t, done.get(t.task_id), state.out)]


def _still_done(task: Task, marker: dict[str, Any] | None, out: Path) -> bool:
    if marker is None:
        return False
    embedded_size = marker["input"]["size"]
    if embedded_size != task.file.size:
        raise StateError(
            f"{task.file.path} changed since task {task.task_id} embedded it (size "
            f"{embedded_size} then, {task.file.size} now); its vectors in {out} would be stale. "
            "Write to a new output.path"
        )
    return all((out / f["path"]).is_file() for f in marker["files"])


def _plan_entry(task: Task) -> dict[str, Any]:
    return {"task": task.task_id, "file": task.file.key, "start": task.start, "stop": task.stop}


def run_tasks(job: Job, state: RunState, todo: list[Task]) -> float:
    """Runs the tasks; returns the seconds spent starting Ray and loading the actors."""
    clock = time.monotonic()
    connect()
    plan = plan_actors(job.config, len(todo))
    log.info("starting %d %s actor(s) for %d task(s)", plan.count, plan.device, len(todo))
    actors = start_actors(job.config, plan, str(job.model_dir))
    startup_s = time.monotonic() - clock
    done_rows = sum(t.rows for t in job.tasks) - sum(t.rows for t in todo)
    progress = Progress(sum(t.rows for t in job.tasks), done_rows)
    retries = job.config.run.max_retries
    # Done tasks first: a repeat is always the occurrence not yet written, never a written one.
    order = [t for t in job.tasks if t not in todo] + todo
    digests = collect_digests(actors, order, job.config.input.id_column, str(state.out), retries)
    repeats = find_repeats(order, digests)
    Driver(job, state, actors, progress, retries, repeats).run(todo)
    return startup_s


def build_report(job: Job, state: RunState, seconds: float, startup_s: float) -> dict[str, Any]:
    planned = {t.task_id for t in job.tasks}
    done, failed = state.settled(planned)
    stages: dict[str, float] = {}
    for marker in done.values():
        for stage, secs in marker["seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + secs
    return {
        "output": str(state.out),
        "tasks_total": len(planned),
        "tasks_done": len(done),
        "tasks_failed": len(failed),
        **totals(done),
        "seconds": round(seconds, 3),
        "seconds_startup": round(startup_s, 3),
        "seconds_per_stage": {k: round(v, 3) for k, v in stages.items()},
        "failures": {k: v["message"] for k, v in failed.items()},
    }
