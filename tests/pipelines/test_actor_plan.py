"""How many actors a run starts and where: the run (Ray's resources) and `embedpipe plan` (this
machine's) both take it from pipelines/batch/actor_plan.py."""

from pipelines.batch.actor_plan import ActorPlan, actor_plan
from pipelines.config import WorkersConfig


def workers(**keys: object) -> WorkersConfig:
    return WorkersConfig.model_validate(keys)


def test_auto_puts_one_actor_on_each_gpu_with_the_cpus_shared_among_them() -> None:
    plan = actor_plan(workers(cpus_per_actor=4), gpus=2, cpus=6, n_tasks=100)
    assert plan == ActorPlan("cuda", count=2, num_cpus=3, num_gpus=1)


def test_auto_splits_the_cpus_by_cpus_per_actor_where_there_is_no_gpu() -> None:
    plan = actor_plan(workers(cpus_per_actor=2), gpus=0, cpus=8, n_tasks=100)
    assert plan == ActorPlan("cpu", count=4, num_cpus=2, num_gpus=0)


def test_openvino_runs_on_the_cpus_of_a_machine_with_gpus() -> None:
    for runtime in ("openvino", "openvino-bf16"):
        plan = actor_plan(workers(runtime=runtime, cpus_per_actor=4), gpus=2, cpus=16, n_tasks=9)
        assert plan == ActorPlan("cpu", count=4, num_cpus=4, num_gpus=0)


def test_never_more_actors_than_tasks_nor_more_cpus_than_the_machine_has() -> None:
    assert actor_plan(workers(), gpus=4, cpus=16, n_tasks=3).count == 3
    assert actor_plan(workers(num_actors=5), gpus=0, cpus=16, n_tasks=2).count == 2
    assert actor_plan(workers(cpus_per_actor=8), gpus=0, cpus=2, n_tasks=9) == ActorPlan(
        "cpu", count=1, num_cpus=2, num_gpus=0
    )


def test_an_explicit_device_and_count_are_kept() -> None:
    assert actor_plan(workers(device="cpu"), gpus=2, cpus=4, n_tasks=9).device == "cpu"
    plan = actor_plan(workers(device="cuda", num_actors=3), gpus=0, cpus=4, n_tasks=9)
    assert plan == ActorPlan("cuda", count=3, num_cpus=1, num_gpus=1)


def test_device_for_resolves_auto_by_the_gpus_and_the_runtime() -> None:
    assert workers().device_for(1) == "cuda"
    assert workers().device_for(0) == "cpu"
    assert workers(runtime="openvino").device_for(8) == "cpu"
    assert workers(device="cpu").device_for(8) == "cpu"
    assert workers(device="cuda").device_for(0) == "cuda"
