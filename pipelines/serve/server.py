"""`embedpipe serve`: the endpoint (endpoint.py) as a Ray Serve deployment.

Ray Serve gathers concurrent requests' model calls (`serve.batch`, up to max_batch_requests
calls, waiting batch_wait_s for more); the embedder then cuts the gathered texts into batches
under the same padded-token budget as the batch pipeline, so one busy replica runs few, full
batches instead of many small ones. Inference runs in a worker thread, so the replica keeps
taking requests (and answering 503s and health checks) while the model works.

Metrics: each replica answers GET /metrics itself (metrics.py); the same three also go through
Ray's metrics (Prometheus on each node): embedpipe_requests (by status),
embedpipe_request_seconds and embedpipe_batch_requests.

A replica takes far more requests than serve.max_queue (max_ongoing_requests), so one over the
queue reaches the endpoint and is answered 429 at once, instead of waiting in Ray's router.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import Response

from pipelines.config import Config, ServeConfig, ServeJob, served_model_id
from pipelines.interrupt import StopRequest
from pipelines.serve.api import ApiError
from pipelines.serve.endpoint import Endpoint, ModelLoader
from workers import EmbedOptions
from workers.errors import DeviceError
from workers.model_dir import MODEL_FILE, read_card

log = logging.getLogger(__name__)

# A rough load-time guess for the 503's estimated_time: reading and initialising ~1 GB/s, plus
# the session's start; only a hint for the client's retry.
LOAD_S_PER_GB, LOAD_BASE_S = 1.0, 3.0
# Requests a replica takes beyond serve.max_queue: the 429s, health checks and scrapes.
ROOM_BEYOND_QUEUE = 256


@serve.deployment(max_ongoing_requests=512)
class FeatureExtraction:
    def __init__(
        self,
        model_dir: str,
        settings: dict[str, Any],
        defaults: dict[str, Any],
        runtime: dict[str, Any],
        model_id: str = "model",
    ) -> None:
        from workers import Embedder

        self.settings = ServeConfig(**settings)
        card = read_card(model_dir)
        gigabytes = (Path(model_dir) / MODEL_FILE).stat().st_size / 1e9
        loader = ModelLoader(
            # A request of one text would run twice to be batch-invariant; the HTTP answer only
            # needs to equal the batch vector to float rounding (its cache is keyed on text).
            lambda: Embedder.load(
                model_dir,
                max_batch_tokens=self.settings.max_batch_tokens,
                batch_invariant=False,
                **runtime,
            ),
            LOAD_BASE_S + LOAD_S_PER_GB * gigabytes,
        )
        self.endpoint = Endpoint(
            self.settings, EmbedOptions(**defaults), loader, self._embed, card, model_id
        )
        batched: Any = self._batched  # serve.batch's wrapper carries the setters
        batched.set_max_batch_size(self.settings.max_batch_requests)
        batched.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self.requests = metrics.Counter("embedpipe_requests", tag_keys=("status",))
        self.latency = metrics.Histogram(
            "embedpipe_request_seconds",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
        )
        self.batch_sizes = metrics.Histogram(
            "embedpipe_batch_requests", boundaries=[1, 2, 4, 8, 16, 32, 64, 128]
        )

    async def __call__(self, request: Request) -> Response:
        clock = time.perf_counter()
        answer = await self.endpoint.handle(
            request.method,
            route_path(request),
            request.headers,
            lambda: read_body(request, self.settings.max_body_bytes),
        )
        self.requests.inc(tags={"status": str(answer.status)})
        self.latency.observe(time.perf_counter() - clock)
        return Response(
            answer.content(),
            status_code=answer.status,
            headers=answer.headers,
            media_type=answer.media_type,
        )

    async def _embed(self, texts: tuple[str, ...], options: EmbedOptions) -> Any:
        return await self._batched((texts, options))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _batched(self, calls: list[tuple[tuple[str, ...], EmbedOptions]]) -> list[Any]:
        """One model call per distinct options among the gathered calls; results split back."""
        stats = self.endpoint.stats
        stats["batches"] += 1
        stats["largest_batch_requests"] = max(stats["largest_batch_requests"], len(calls))
        self.batch_sizes.observe(len(calls))
        self.endpoint.metrics.batch_requests.observe(len(calls))
        embedder = self.endpoint.loader.embedder
        assert embedder is not None  # the endpoint asks only once the model is loaded
        results: list[Any] = [None] * len(calls)
        groups: dict[EmbedOptions, list[int]] = {}
        for i, (_, options) in enumerate(calls):
            groups.setdefault(options, []).append(i)
        for options, members in groups.items():
            texts = [t for i in members for t in calls[i][0]]
            got = await asyncio.to_thread(embedder.embed, texts, options)
            start = 0
            for i in members:
                stop = start + len(calls[i][0])
                # each request's timing headers give its batch's tokenizing and device time
                part = got.rows(start, stop)
                results[i] = dataclasses.replace(
                    part, device_s=got.device_s, tokenize_s=got.tokenize_s
                )
                start = stop
        return results

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose model failed to load."""
        if self.endpoint.loader.error is not None:
            raise RuntimeError(f"the model failed to load: {self.endpoint.loader.error}")


def route_path(request: Request) -> str:
    """The path below the application's route prefix, so routes hold wherever it is mounted."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body has more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def application(config: Config | ServeJob, model_dir: Path) -> Any:
    """The bound deployment for this config: replicas, resources, model and defaults."""
    workers, settings = config.workers, config.serve
    device = replica_device(config)
    model_id = served_model_id(config.model, settings)
    return FeatureExtraction.options(  # type: ignore[attr-defined]  # serve.deployment wraps it
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_queue + ROOM_BEYOND_QUEUE,
        ray_actor_options={"num_cpus": workers.cpus_per_actor, "num_gpus": int(device == "cuda")},
    ).bind(
        str(model_dir),
        settings.model_dump(mode="json"),
        dataclasses.asdict(config.embedding.options()),
        {
            "device": device,
            "threads": workers.cpus_per_actor,
            "spin": False,
            "runtime": workers.runtime,
        },
        model_id,
    )


def replica_device(config: Config | ServeJob) -> str:
    """cpu or cuda for the replicas: workers.device, where auto is cuda when the cluster has a
    GPU for each replica and the runtime is onnxruntime. cuda on a cluster with fewer GPUs than
    replicas fails at once, naming what is missing (Serve would otherwise wait for a GPU that
    never comes, answering nothing)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = config.serve.replicas
    if config.workers.device == "auto":  # a GPU each, or none
        return config.workers.device_for(gpus if gpus >= replicas else 0)
    if config.workers.device == "cuda" and gpus < replicas:
        raise DeviceError(
            f"workers.device is cuda but the Ray cluster has {gpus} GPU(s) for "
            f"serve.replicas={replicas} (one GPU each); start Ray on a node with a "
            "GPU, lower serve.replicas, or set workers.device=cpu"
        )
    return config.workers.device


def start(config: Config | ServeJob, model_dir: Path) -> None:
    """Starts Ray Serve on serve.host:serve.port with the endpoint at '/'; returns once the
    application is running."""
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    serve.run(application(config, model_dir), name="embedpipe", route_prefix="/")


def serve_until_stopped(config: Config | ServeJob, model_dir: Path) -> int:
    """Serves until SIGINT or SIGTERM, then shuts Serve down; returns the shell's exit code for
    that signal (130, 143). The handlers are our own, as `embedpipe run`'s are: a process started
    in the background of a shell without job control (`nohup embedpipe serve ... &`, a CI
    script) inherits SIGINT ignored, Python then raises no KeyboardInterrupt, and the server was
    deaf to the Ctrl-C or `kill -INT` meant to stop it. A first signal only sets a flag, so one
    that lands while Serve starts stops the server once it is up, not inside Ray's start-up code;
    a second one stops at once, so a start-up that cannot finish (a replica no node has room
    for) can still be interrupted."""
    stop = StopRequest(0.0, draining="the server stops once it is up", second_raises=True)
    stop.immediate = False
    stop.install()
    try:
        start(config, model_dir)
        while not stop.requested:
            time.sleep(0.1)
    except Exception as err:
        # The second signal raises Interrupted wherever the main thread is, which may be inside
        # Ray's start-up code, and that code may turn it into an error of its own: after a
        # second signal any start-up error is the stop, not a failure.
        if stop.count < 2:
            raise
        log.debug("start-up stopped by the second signal: %r", err)
    finally:
        stop.restore()
        shut_down(stopped_now=stop.count >= 2)
    return stop.exit_code


def shut_down(stopped_now: bool) -> None:
    """Shuts Serve down; after a second signal a start-up cut short may leave Serve in a state
    its shutdown trips on, and the process ends anyway (its Ray goes with it), so that is
    logged rather than raised."""
    try:
        serve.shutdown()
    except Exception as err:
        if not stopped_now:
            raise
        log.warning("Serve's shutdown after the second signal: %s", err)
