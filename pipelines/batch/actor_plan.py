"""How many actors a run starts, on which device, with how many CPUs and GPUs each: arithmetic
on the workers config and a count of GPUs and CPUs, shared by the run (the Ray cluster's
resources) and `embedpipe plan` (this machine's), so the two never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import WorkersConfig


@dataclass(frozen=True)
class ActorPlan:
    device: str  # cpu | cuda
    count: int
    num_cpus: int
    num_gpus: int


def actor_plan(workers: WorkersConfig, gpus: int, cpus: int, n_tasks: int) -> ActorPlan:
    """workers.num_actors actors (auto: one per GPU, or the CPUs split by cpus_per_actor), never
    more than there are tasks."""
    if workers.device_for(gpus) == "cuda":
        count = max(gpus if workers.num_actors == "auto" else int(workers.num_actors), 1)
        # A GPU actor's CPUs tokenize for it (its tokenizer threads follow them), as many as
        # asked while the cluster has that many per GPU actor.
        per = max(min(workers.cpus_per_actor, cpus // count), 1)
        plan = ActorPlan("cuda", count, per, 1)
    else:
        per = min(workers.cpus_per_actor, max(cpus, 1))
        count = max(cpus // per, 1) if workers.num_actors == "auto" else int(workers.num_actors)
        plan = ActorPlan("cpu", count, per, 0)
    return ActorPlan(plan.device, min(plan.count, max(n_tasks, 1)), plan.num_cpus, plan.num_gpus)
