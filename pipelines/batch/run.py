"""`embedpipe run`: plan, take the output's lock, run the tasks not yet done, report.

A rerun trusts a done marker only while the files it names are still there, so deleting a part
file is enough to have its task redone. `_SUCCESS` is written last, and only when every task of
the plan is done. Temporary files left by killed processes are swept when a run starts and
again before `_SUCCESS`, so a finished output holds no stray file.

SIGINT and SIGTERM stop the run cleanly (see interrupt.py): the report then says which signal
ended it, and the command exits 130 or 143.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import ray

from pipelines.batch.calibration import sample_ranges, sample_request, stored_ranges
from pipelines.batch.cluster import connect, plan_actors, shut_down_in_background, start_actors
from pipelines.batch.counting import count_inputs
from pipelines.batch.driver import Driver, TaskPlans
from pipelines.batch.preflight import Job, prepare, resolved_config
from pipelines.batch.prepass import (
    ReusePlan,
    answers,
    collect_digests,
    meet_repeats,
    plan_reuse,
)
from pipelines.batch.progress import Progress
from pipelines.charts import ChartsUnavailable, run_report_png
from pipelines.config import Config
from pipelines.inputs.planning import Task, number_rows
from pipelines.interrupt import Interrupted, StopRequest
from pipelines.output.markers import DoneMarker, totals
from pipelines.output.run_figures import RunFigures, run_figures
from pipelines.output.state import RunState, StateError
from pipelines.reindex import cache_from as earlier
from pipelines.reindex.cache_from import CacheFile, CacheSource
from pipelines.reindex.shares import SHARES

log = logging.getLogger(__name__)


def run_job(
    config: Config, stop: StopRequest | None = None, *, release_ray: bool = False
) -> dict[str, Any]:
    """Runs the job; raises Interrupted when stopped before the output was touched.

    release_ray: stop the Ray this call starts once the tasks are done, while the report is
    written (the command line's run, whose process ends next); a Ray that was already up when
    it was called is left as it is.
    """
    started = time.monotonic()
    stop = stop or StopRequest(config.run.stop_grace_s)
    stop.install()
    release = release_ray and not ray.is_initialized()
    try:
        job = prepare(config)
        stop.immediate = False
        return _run_held(job, stop, started, time.monotonic() - started, release)
    finally:
        stop.restore()


def _run_held(
    job: Job, stop: StopRequest, started: float, listing_s: float, release: bool
) -> dict[str, Any]:
    state = RunState(job.config.output.path, job.storage)
    state.acquire()
    stopping = None
    try:
        state.mark_started(time.time() - (time.monotonic() - started))
        job = adopt_ranges(job, state)
        state.check_fingerprint(job.fingerprint)
        clock = time.monotonic()
        job = count_inputs(job, stop)  # CSV and compressed shards, on the cluster
        listing_s += time.monotonic() - clock
        state.write_config(resolved_config(job.config))
        state.write_plan([_plan_entry(t) for t in job.tasks])
        state.clear_success()
        state.sweep_temporaries()
        todo = pending(job, state)
        index, sources = open_cache(job) if todo else ((), [])
        usage = run_tasks(job, state, todo, stop, index) if todo else {}
        if release and ray.is_initialized():  # no task is left for the actors
            stopping = shut_down_in_background()
        usage["seconds_planning"] = listing_s + usage.get("seconds_prepass", 0.0)
        report, figures = build_report(job, state, time.monotonic() - started, usage)
        report["cache"] = {
            "use_cache": job.config.run.use_cache,
            "sources": [s.as_dict() for s in sources],
        }
        if stop.signum is not None:
            report["interrupted"] = signal.Signals(stop.signum).name
        report["picture"] = draw_report(state, figures)
        state.write_report(report)
        if report["tasks_done"] == report["tasks_total"]:
            state.sweep_temporaries()  # left by actors killed during this run
            state.clear(SHARES)  # every task that could copy from them is done
            state.succeed()
        return report
    finally:
        state.release()
        if stopping is not None:
            stopping.join()


def draw_report(state: RunState, figures: RunFigures) -> str | None:
    """`_state/report.png` from the run's figures; its location, or None (and how to get it,
    logged) where matplotlib is missing."""
    try:
        png = run_report_png(figures, f"embedpipe run: {state.out}")
    except ChartsUnavailable as err:
        log.info("no _state/report.png: %s; the figures are in _state/report.json", err)
        return None
    return state.write_picture("report.png", png)


def open_cache(job: Job) -> tuple[tuple[CacheFile, ...], list[CacheSource]]:
    run = job.config.run
    if not (run.use_cache and run.cache_from):
        return (), []
    return earlier.open_cache(run.cache_from, job.fingerprint, job.storage)


def pending(job: Job, state: RunState) -> list[Task]:
    done = state.done()
    check_inputs_unchanged(job, done, state.out)
    return [t for t in job.tasks if not (t.task_id in done and state.still_there(done[t.task_id]))]


def check_inputs_unchanged(job: Job, done: dict[str, DoneMarker], out: str) -> None:
    """Refuses to go on where a shard was written since one of its tasks was done (its size or
    its version, the mtime, differ): its part files would be stale, and where its row count
    changed, the new plan's tasks would embed its rows a second time beside the old tasks' part
    files. Checks every done marker, planned or not, for that reason; markers written before
    versions were recorded are checked by size."""
    files = {f.key: f for f in job.files}
    for task_id, marker in sorted(done.items()):
        file = files.get(marker.input_key)
        if file is None:
            continue
        if file.size != marker.input_size:
            change = f"size {marker.input_size} then, {file.size} now"
        elif marker.input_version and file.version != marker.input_version:
            change = (
                f"same size, modified {_when(marker.input_version)} then, {_when(file.version)} "
                "now; if only its time changed (a copy that did not keep it), restore it with "
                f"touch -d '{_when(marker.input_version)}' and rerun"
            )
        else:
            continue
        raise StateError(
            f"{file.path} changed since task {task_id} embedded it ({change}); its vectors in "
            f"{out} would be stale. Write to a new output.path"
        )


def _when(version: str) -> str:
    """An mtime version (ns since the epoch) as local time, to the nanosecond."""
    ns = int(version)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 10**9))
    return f"{stamp}.{ns % 10**9:09d}"


def _plan_entry(task: Task) -> dict[str, Any]:
    """A byte range of JSON Lines is planned by its bytes: its rows are counted on the actors."""
    if task.span is not None:
        first, stop = task.span
        return {"task": task.task_id, "file": task.file.key, "bytes": [first, stop]}
    return {"task": task.task_id, "file": task.file.key, "start": task.start, "stop": task.stop}


def run_tasks(
    job: Job, state: RunState, todo: list[Task], stop: StopRequest, index: tuple[CacheFile, ...]
) -> dict[str, float]:
    """Runs the tasks until done or stopped; returns the seconds spent starting Ray and loading
    the actors, then embedding, and the share of that time the actors' devices sat idle."""
    clock = time.monotonic()
    try:
        connect()
        stop.install()  # ray.init put its own SIGTERM handler in place of ours
        plan = plan_actors(job.config, len(todo))
        log.info("starting %d %s actor(s) for %d task(s)", plan.count, plan.device, len(todo))
        actors = start_actors(job.config, plan, str(job.model_dir), stop)
    except Interrupted:
        return {"seconds_startup": time.monotonic() - clock}
    usage = {"seconds_startup": time.monotonic() - clock}
    with contextlib.suppress(Interrupted):  # the caller reports from what the markers say
        driver = drive(job, state, todo, actors, stop, index, usage)
        usage["seconds_embedding"] = driver.wall_s
        if (idle := driver.device_idle_share()) is not None:
            usage["device_idle_share"] = idle
    return usage


def drive(
    job: Job,
    state: RunState,
    todo: list[Task],
    actors: list[Any],
    stop: StopRequest,
    index: tuple[CacheFile, ...],
    usage: dict[str, float],
) -> Driver:
    run, clock = job.config.run, time.monotonic()
    job = calibrated(job, state, actors, stop)
    # Done tasks first: a repeat is always the occurrence not yet written, never a written one.
    order = [t for t in job.tasks if t not in todo] + todo
    digests = collect_digests(job, actors, order, stop)
    # byte ranges of JSON Lines learn their rows from the digest pass
    order, unnumbered = number_rows(order, {k: s.rows for k, s in digests.ids.items()})
    digests = digests.failing(dict(unnumbered))
    waiting = {t.task_id for t in todo}
    todo = [t for t in order if t.task_id in waiting]
    total = sum(t.rows for t in order)
    progress = Progress(total, total - sum(t.rows for t in todo))
    repeats = meet_repeats(job, actors, order, digests, stop)
    reuse = None
    if run.use_cache:  # owners done before this run hand on their part files
        done = {k: v.part_paths(state.out) for k, v in state.done().items()}
        reuse = plan_reuse(job, actors, digests, repeats, index, done, stop)
    usage["seconds_prepass"] = time.monotonic() - clock
    plans = TaskPlans(repeats, reuse or ReusePlan())
    driver = Driver(job, state, actors, progress, plans, stop)
    driver.run(todo, digests.unread)
    return driver


def adopt_ranges(job: Job, state: RunState) -> Job:
    """A resumed int8/uint8 run quantizes with the ranges its output records."""
    if job.layout is None or not job.layout.needs_ranges:
        return job
    ranges = stored_ranges(state.stored_fingerprint())
    return job if ranges is None else job.with_ranges(ranges)


def calibrated(job: Job, state: RunState, actors: list[Any], stop: StopRequest) -> Job:
    """The job with its int8/uint8 ranges from a sample embedded on an actor, recorded in the
    output's fingerprint before any task runs (calibration.py)."""
    layout = job.layout
    if layout is None or not layout.needs_ranges:
        return job
    out = job.config.output
    log.info("calibrating %s: embedding %d sample texts", layout.precision, out.calibration_rows)
    ask = sample_request(
        job.tasks,
        out.calibration_rows,
        job.config.input.text_column,
        job.config.embedding.options(),
        layout,
    )
    send = lambda actor, request: actor.call.remote(sample_ranges, request)  # noqa: E731
    ((_, (ref,)),) = list(answers(actors, [ask], send, job.config.run, stop, "calibrating"))
    job = job.with_ranges(ray.get(ref))
    state.complete_fingerprint(job.fingerprint)
    return job


def build_report(
    job: Job, state: RunState, seconds: float, usage: dict[str, float]
) -> tuple[dict[str, Any], RunFigures]:
    """report.json, and the figures (rates over the tasks this run did) that draw_report draws."""
    planned = {t.task_id for t in job.tasks}
    done, failed = state.settled(planned)
    figures = run_figures(done, failed, state.started_at())
    report = {
        "output": str(state.out),
        "tasks_total": len(planned),
        "tasks_done": len(done),
        "tasks_failed": len(failed),
        **totals(done),
        "seconds": round(seconds, 3),
        "seconds_startup": round(usage.get("seconds_startup", 0.0), 3),
        # listing and counting the input, then the digest pass and the meets on the actors
        "seconds_planning": round(usage.get("seconds_planning", 0.0), 3),
        "seconds_embedding": round(usage.get("seconds_embedding", 0.0), 3),
        # of the actors' time while embedding: near 0 means reading, tokenizing and writing
        # kept up with the device (the report's stage seconds say which one did not)
        "device_idle_share": round(usage["device_idle_share"], 3)
        if "device_idle_share" in usage
        else None,
        "seconds_per_stage": {k: round(v, 3) for k, v in figures.seconds_per_stage.items()},
        "failures": {k: v.message for k, v in failed.items()},
        "figures": figures.as_dict(),
    }
    return report, figures
