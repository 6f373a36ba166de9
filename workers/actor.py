"""The Ray actor: one loaded embedder per actor, pinned to one GPU or a few CPUs by the driver.

The actor holds the model and runs whatever task function the driver sends it (the pipelines'
`run_task`), so workers/ stays free of readers and writers. Ray restarts a crashed actor (the
constructor reloads the model); a call in flight when it died fails with RayActorError and the
driver resubmits that task. Calls are never retried by Ray itself: the driver counts attempts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from workers.model_shipment import ModelShipment, model_dir_on_this_node

if TYPE_CHECKING:  # the driver imports this module too, and needs no onnxruntime
    from workers.embedder import Embedder

T = TypeVar("T")
R = TypeVar("R")


# Calls an actor runs at once (the driver passes it as max_concurrency): while one task's
# batches run on the device, the other reads, tokenizes or writes. The embedder serializes the
# device itself.
CONCURRENT_TASKS = 2


@ray.remote(max_restarts=-1, max_task_retries=0)
class EmbedActor:
    def __init__(
        self,
        model: ModelShipment,
        device: str,
        threads: int,
        max_batch_tokens: int,
        runtime: str = "onnxruntime",
    ) -> None:
        # The tokenizer's thread pool follows cpus_per_actor (it would take every core of the
        # node otherwise, fighting the other actors); read once, at its first parallel call.
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        from workers.embedder import Embedder

        self.model_dir = model_dir_on_this_node(model)
        self.embedder = Embedder.load(
            self.model_dir,
            device=device,
            threads=threads,
            max_batch_tokens=max_batch_tokens,
            parallel_batches=True,  # a batch job: throughput, not one request's latency
            runtime=runtime,
        )

    def ready(self) -> dict[str, Any]:
        """Answers once the model is loaded: where this actor runs."""
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": self.embedder.session.device,
            "runtime": self.embedder.session.runtime,
            "model_dir": self.model_dir,
        }

    def call(self, fn: Callable[[Embedder, T], R], arg: T) -> R:
        return fn(self.embedder, arg)

    def call_with(self, fn: Callable[..., R], arg: T, *fetched: object) -> R:
        """As call, with objects from Ray's object store: ObjectRefs given here arrive as their
        values (numpy arrays read in place, not copied)."""
        return fn(self.embedder, arg, *fetched)
