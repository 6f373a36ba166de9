"""Ray and the actors: connect (RAY_ADDRESS, or an embedded local Ray), size and place actors,
and wait for them to load the model, never forever. On a cluster the model travels to the
other nodes through Ray's object store (workers/model_shipment.py), so no node needs a copy.

With `wait_for_model: false` a missing resource fails at once; otherwise the wait ends after
`wait_timeout_s` with a message that says which resource the cluster lacks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from pipelines.batch.actor_plan import ActorPlan, actor_plan
from pipelines.config import Config
from pipelines.interrupt import StopRequest
from workers.actor import CONCURRENT_TASKS, EmbedActor
from workers.model_dir import read_card
from workers.model_shipment import ModelShipment, ship_model

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """Actors cannot be placed or loaded; the message names the missing resource."""


def connect() -> None:
    if ray.is_initialized():
        return
    # Ray reads RAY_ADDRESS itself; without it, ray.init() starts a local Ray in this process.
    ray.init(log_to_driver=True, include_dashboard=False, logging_level=logging.WARNING)
    log.info("ray: %s", os.environ.get("RAY_ADDRESS", "embedded local instance"))


def shut_down_in_background() -> threading.Thread:
    """Stops the Ray this process started while the caller goes on: its processes take about
    1.5 s to stop on two cores, as long as the driver takes to draw and write its report. The
    caller joins the thread before it exits."""
    thread = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    thread.start()
    return thread


def plan_actors(config: Config, n_tasks: int) -> ActorPlan:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    return actor_plan(config.workers, gpus, cpus, n_tasks)


def missing_resources(plan: ActorPlan) -> str | None:
    """What the cluster lacks for the planned actors, or None when it has enough."""
    resources = ray.cluster_resources()
    needs = {"GPU": plan.num_gpus * plan.count, "CPU": plan.num_cpus * plan.count}
    short = [
        f"{need} {name} (the cluster has {int(resources.get(name, 0))})"
        for name, need in needs.items()
        if need > resources.get(name, 0)
    ]
    if not short:
        return None
    return f"{plan.count} {plan.device} actor(s) need " + " and ".join(short)


def start_actors(
    config: Config, plan: ActorPlan, model_dir: str, stop: StopRequest | None = None
) -> list[Any]:
    run = config.run
    lacking = missing_resources(plan)
    if lacking and not run.wait_for_model:
        raise ClusterError(f"{lacking}; not waiting, since run.wait_for_model is false")
    model = shipment(model_dir, plan)
    actors = [
        EmbedActor.options(  # type: ignore[attr-defined]  # ray.remote wraps the class
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_concurrency=CONCURRENT_TASKS
        ).remote(
            model,
            plan.device,
            plan.num_cpus,
            config.embedding.max_batch_tokens,
            config.workers.runtime,
        )
        for _ in range(plan.count)
    ]
    wait_ready(actors, run.wait_timeout_s, lacking, stop or StopRequest())
    return actors


def shipment(model_dir: str, plan: ActorPlan) -> ModelShipment:
    """The model for the actors: the driver's directory, also put into the object store when
    an actor may start on another node (workers/model_shipment.py)."""
    if not may_leave_this_node(plan):
        return ModelShipment(model_dir, read_card(model_dir).onnx_sha256)
    log.info("shipping the model in %s to the other nodes through the object store", model_dir)
    return ship_model(model_dir)


def may_leave_this_node(plan: ActorPlan) -> bool:
    """More than one node, or a driver's node that cannot hold an actor (a head without GPUs,
    the other nodes yet to join)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        return True
    here = ray.get_runtime_context().get_node_id()
    own: dict[str, float] = next(
        (n.get("Resources", {}) for n in nodes if n.get("NodeID") == here), {}
    )
    return bool(own.get("CPU", 0) < plan.num_cpus or own.get("GPU", 0) < plan.num_gpus)


def wait_ready(actors: list[Any], timeout_s: float, lacking: str | None, stop: StopRequest) -> None:
    refs = [actor.ready.remote() for actor in actors]
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        stop.check()
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        for ref in done:
            try:
                info = ray.get(ref)
            except RayActorError as err:
                raise ClusterError(f"an actor could not load the model: {err}") from err
            log.info(
                "actor ready: pid %s on %s (%s, %s), model in %s",
                info["pid"],
                info["node"],
                info["device"],
                info["runtime"],
                info["model_dir"],
            )
        if pending and time.monotonic() > deadline:
            for actor in actors:
                ray.kill(actor)
            reason = lacking or "the actors did not finish loading the model"
            raise ClusterError(
                f"{len(pending)} of {len(actors)} actor(s) not ready after {timeout_s:g} s: "
                f"{reason}. Raise run.wait_timeout_s, or change workers.device/num_actors"
            )


READY, RESTARTING, GONE = "ready", "restarting", "gone"


def answer(ref: Any) -> tuple[str, Exception | None]:
    """What an actor's `ready` probe says: ready, restarting (Ray brings it back: ask again), or
    gone for good, with Ray's error."""
    try:
        ray.get(ref)
    except ActorUnavailableError as err:
        return RESTARTING, err
    except RayActorError as err:
        return GONE, err
    return READY, None


def live_actors(actors: list[Any], wait_s: float, stop: StopRequest) -> list[Any]:
    """The actors that answer `ready`, waiting while Ray restarts the others; once one answers,
    the caller goes on with those that do rather than wait on a slow one."""
    deadline = time.monotonic() + wait_s
    probes = {actor.ready.remote(): actor for actor in actors}
    live: list[Any] = []
    while probes:
        stop.check()
        ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=1.0)
        for ref in ready:
            actor = probes.pop(ref)
            said, _ = answer(ref)
            if said == READY:
                live.append(actor)
            elif said == RESTARTING:
                time.sleep(0.2)
                probes[actor.ready.remote()] = actor
        if (live and not ready) or time.monotonic() > deadline:
            break
    if not live:
        raise ClusterError(
            f"no actor answered within {wait_s:g} s; the cluster lacks the resources to "
            "restart them. Add nodes or lower workers.num_actors, and rerun"
        )
    return live
