"""The endpoint's logic: routes, auth, backpressure, the model's loading state, the cache.

Kept apart from Ray Serve (server.py only adapts HTTP to it and batches the model calls), so every
answer, 503 while loading and 429 when full included, is tested without starting a cluster. The
model loads in a background thread: the replica is up at once and can say "loading" instead of
leaving clients hanging on a connection that nothing answers.

Routes: the Inference API's feature extraction (POST / and /models/<name>/pipeline/...), TEI's
POST /embed, /tokenize and GET /info, OpenAI's POST /v1/embeddings (also /embeddings, for a
base_url without /v1), and GET /health and /metrics, the only two without auth. All embedding
routes share one path: the cache, the batcher, `dimensions`, and TEI's timing headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import ServeConfig
from pipelines.serve.api import (
    ApiError,
    Query,
    bearer_ok,
    check_dimensions,
    flag,
    is_api_path,
    parse_body,
)
from pipelines.serve.encode import json_bytes, vectors
from pipelines.serve.metrics import CONTENT_TYPE, ServerMetrics
from pipelines.serve.openai_api import openai_answer, openai_error, parse_openai
from pipelines.serve.tei_api import info, parse_tokenize, tokens_answer
from pipelines.serve.vector_cache import VectorCache
from workers import EmbedOptions, OptionError
from workers.finish import l2_normalize
from workers.model_dir import ModelCard

if TYPE_CHECKING:  # the endpoint itself never imports onnxruntime
    from workers import Embedder, Embeddings

log = logging.getLogger(__name__)

EmbedCall = Callable[[tuple[str, ...], EmbedOptions], Awaitable["Embeddings"]]
JSON = "application/json"
# How fast the Retry-After estimate follows the time requests now take to be answered.
LATENCY_WEIGHT = 0.2


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # JSON-able (numpy arrays included), or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = JSON

    def content(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json_bytes(self.body)


@dataclass(frozen=True)
class Route:
    name: str  # its label in the metrics
    method: str
    auth: bool = True
    openai: bool = False  # errors in OpenAI's shape


FEATURE_EXTRACTION = Route("feature-extraction", "POST")
OPENAI = Route("openai", "POST", openai=True)
ROUTES = {
    "/health": Route("health", "GET", auth=False),
    "/ready": Route("health", "GET", auth=False),
    "/metrics": Route("metrics", "GET", auth=False),
    "/info": Route("info", "GET"),
    "/embed": Route("embed", "POST"),
    "/tokenize": Route("tokenize", "POST"),
    "/v1/embeddings": OPENAI,
    "/embeddings": OPENAI,
}
ROUTE_LIST = "POST /, /embed, /v1/embeddings, /tokenize; GET /info, /health, /metrics"


def route_of(path: str) -> Route | None:
    found = ROUTES.get(path.rstrip("/"))
    return found or (FEATURE_EXTRACTION if is_api_path(path) else None)


@dataclass(frozen=True)
class Request:
    headers: Mapping[str, str]
    read: Callable[[], Awaitable[bytes]]
    started: float  # time.perf_counter() at arrival


@dataclass(frozen=True)
class Computed:
    """An embedding request's vectors (after `dimensions`), each text's tokens, and where its
    time went (the batch's tokenization and inference; the rest of its wait is queue)."""

    vectors: np.ndarray
    tokens: np.ndarray
    computed: int  # texts run through the model (the others were cache hits)
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0

    def headers(self, started: float, device: str) -> dict[str, str]:
        """TEI's headers, in whole milliseconds as TEI writes them; x-compute-time is the time
        from the request's arrival, as TEI's is."""
        ran = self.computed > 0
        total = str(_ms(time.perf_counter() - started))
        return {
            "x-compute-time": total,
            "x-total-time": total,
            "x-tokenization-time": str(_ms(self.tokenize_s)),
            "x-queue-time": str(_ms(self.queue_s)),
            "x-inference-time": str(_ms(self.inference_s)),
            "x-compute-tokens": str(int(self.tokens.sum()) if ran else 0),
            "x-compute-type": device,
            "x-cache": "miss" if ran else "hit",
        }


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class ModelLoader:
    """Runs `load` in a background thread and says how long it should still take."""

    def __init__(self, load: Callable[[], Embedder], estimate_s: float) -> None:
        self.embedder: Embedder | None = None
        self.error: BaseException | None = None
        self._estimate_s = estimate_s
        self._started = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(load,), daemon=True, name="load-model").start()

    def _run(self, load: Callable[[], Embedder]) -> None:
        try:
            self.embedder = load()
        except BaseException as err:  # kept and reported to every request; never lost
            log.exception("the model failed to load")
            self.error = err
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def remaining_s(self) -> float:
        return round(max(1.0, self._estimate_s - (time.monotonic() - self._started)), 1)

    async def wait(self, timeout_s: float) -> bool:
        return await asyncio.to_thread(self._done.wait, timeout_s)


class Endpoint:
    def __init__(
        self,
        settings: ServeConfig,
        defaults: EmbedOptions,
        loader: ModelLoader,
        embed: EmbedCall,
        card: ModelCard,
        model_id: str,
    ) -> None:
        self.settings, self.defaults = settings, defaults
        self.openai_defaults = settings.openai.options()
        self.loader, self.embed = loader, embed
        self.card, self.model_id = card, model_id
        self.tokens = settings.tokens()
        self.cache = VectorCache(card.onnx_sha256, settings.cache_entries)
        self.metrics = ServerMetrics()
        self.stats: dict[str, int] = {"requests": 0, "batches": 0, "largest_batch_requests": 0}
        self.held = 0  # embedding requests admitted and not yet answered
        self.latency_s = 1.0  # recent seconds to answer one, for Retry-After
        self._handlers: dict[str, Callable[[Request], Awaitable[Answer]]] = {
            "health": self._health,
            "metrics": self._metrics,
            "info": self._info,
            "embed": self._feature_extraction,
            "feature-extraction": self._feature_extraction,
            "tokenize": self._tokenize,
            "openai": self._openai,
        }

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Callable[[], Awaitable[bytes]],
    ) -> Answer:
        """The answer to one request; whatever the request holds, never an exception."""
        request = Request(headers, body, time.perf_counter())
        route = route_of(path)
        self.stats["requests"] += 1
        try:
            answer = await self._handle(method, path, route, request)
        except ApiError as err:
            answer = self._error(route, err)
        except Exception:
            # The client gets an id to quote, never the exception: its text can name the
            # server's paths and internals. The log has the whole traceback under that id.
            incident = uuid.uuid4().hex[:12]
            log.exception("request failed (incident %s)", incident)
            answer = self._error(route, ApiError(500, f"internal error (incident {incident})"))
        seconds = time.perf_counter() - request.started
        self.metrics.answered(route.name if route else "unknown", answer.status, seconds)
        return answer

    async def _handle(
        self, method: str, path: str, route: Route | None, request: Request
    ) -> Answer:
        if route is None:
            raise ApiError(404, f"no route {path}; the routes: {ROUTE_LIST}")
        if method != route.method:
            raise ApiError(
                405,
                f"{method} is not allowed on {path}: {route.method} it",
                {"Allow": route.method},
            )
        if route.auth and not bearer_ok(request.headers.get("authorization"), self.tokens):
            raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required")
        return await self._handlers[route.name](request)

    def _error(self, route: Route | None, err: ApiError) -> Answer:
        body = openai_error(err) if route is not None and route.openai else err.body()
        return Answer(err.status, body, err.headers)

    # routes

    async def _health(self, request: Request) -> Answer:
        if not self.loader.done:
            loading = {"status": "loading", "estimated_time": self.loader.remaining_s()}
            return Answer(503, loading)
        if self.loader.error is not None:
            # the reason can name the server's files: the log has it, the client gets the kind
            failed = f"the model failed to load ({type(self.loader.error).__name__})"
            return Answer(500, {"status": "failed", "error": failed})
        return Answer(200, {"status": "ready", **self.stats, "cached": len(self.cache)})

    async def _metrics(self, request: Request) -> Answer:
        self.metrics.model_loaded.set(int(self.loader.embedder is not None))
        return Answer(200, self.metrics.text(), media_type=CONTENT_TYPE)

    async def _info(self, request: Request) -> Answer:
        embedder = self.loader.embedder
        device = embedder.session.device if embedder is not None else "loading"
        runtime = embedder.session.runtime if embedder is not None else "loading"
        return Answer(200, info(self.card, self.settings, self.model_id, device, runtime))

    async def _feature_extraction(self, request: Request) -> Answer:
        async with self._admitted():
            query = parse_body(await request.read(), self.settings.max_inputs, self.defaults)
            computed, device = await self._compute(query, request)
        return Answer(200, vectors(computed.vectors), computed.headers(request.started, device))

    async def _openai(self, request: Request) -> Answer:
        async with self._admitted():
            asked = parse_openai(
                await request.read(), self.settings.max_inputs, self.openai_defaults
            )
            computed, device = await self._compute(asked.query, request)
        tokens = int(computed.tokens.sum())
        body = openai_answer(computed.vectors, tokens, self.model_id, asked.encoding)
        return Answer(200, body, computed.headers(request.started, device))

    async def _tokenize(self, request: Request) -> Answer:
        query = parse_tokenize(await request.read(), self.settings.max_inputs, self.defaults)
        embedder = await self._model(flag(request.headers.get("x-wait-for-model"), False))
        found = []
        for i, text in enumerate(query.texts):
            try:
                found.append(
                    embedder.preparer.tokenize(text, query.options, query.special, self.model_id)
                )
            except OptionError as err:
                raise ApiError(422, f"inputs[{i}]: {err}") from err
        return Answer(200, tokens_answer(found))

    # the embedding path

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """Holds a place among serve.max_queue; a request beyond them gets 429 at once, with
        Retry-After: about the time requests now take to be answered."""
        if self.held >= self.settings.max_queue:
            retry = max(1, math.ceil(self.latency_s))
            raise ApiError(
                429,
                f"the server is at capacity ({self.held} requests waiting); retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        self.held += 1
        self.metrics.queue.set(self.held)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.held -= 1
            self.metrics.queue.set(self.held)
            seconds = time.perf_counter() - started
            self.latency_s += LATENCY_WEIGHT * (seconds - self.latency_s)

    async def _compute(self, query: Query, request: Request) -> tuple[Computed, str]:
        embedder = await self._model(flag(request.headers.get("x-wait-for-model"), False))
        try:
            embedder.preparer.prompt_for(query.options, self.model_id)
        except OptionError as err:
            raise ApiError(422, str(err)) from err
        dimensions = check_dimensions(query.dimensions, self.card.dim)
        computed = await self._vectors(query, flag(request.headers.get("x-use-cache"), True))
        self.metrics.texts.labels("hit").inc(len(query.texts) - computed.computed)
        self.metrics.texts.labels("miss").inc(computed.computed)
        if computed.computed:
            self.metrics.stages(computed.tokenize_s, computed.queue_s, computed.inference_s)
        if dimensions is not None and dimensions < self.card.dim:
            cut = computed.vectors[:, :dimensions]
            kept = l2_normalize(cut) if query.options.normalize else cut
            computed = dataclasses.replace(computed, vectors=kept)
        return computed, embedder.session.device

    async def _model(self, wait: bool) -> Embedder:
        loader = self.loader
        if not loader.done and not (wait and await loader.wait(self.settings.wait_timeout_s)):
            raise ApiError(
                503,
                "the model is loading; retry later, or send x-wait-for-model: true to wait",
                estimated_time=loader.remaining_s(),
            )
        if loader.embedder is None:
            # its reason names the server's files: the log has it, the client gets the kind
            raise ApiError(
                500, f"the model failed to load ({type(loader.error).__name__}); see the log"
            )
        return loader.embedder

    async def _vectors(self, query: Query, use_cache: bool) -> Computed:
        texts, options = query.texts, query.options
        rows = [self.cache.get(t, options) if use_cache else None for t in texts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if not missing:
            return _from_rows(rows, 0)
        clock = time.perf_counter()
        got = await self.embed(tuple(texts[i] for i in missing), options)
        waited = time.perf_counter() - clock
        for j, i in enumerate(missing):
            if got.errors[j] is not None:
                raise ApiError(422, f"inputs[{i}]: {got.errors[j]}")
            rows[i] = (got.vectors[j], int(got.n_tokens[j]))
            self.cache.put(texts[i], options, got.vectors[j], int(got.n_tokens[j]))
        self.metrics.tokens.inc(int(got.n_tokens.sum()))
        ran = got.tokenize_s + got.device_s
        return _from_rows(rows, len(missing), got.tokenize_s, max(0.0, waited - ran), got.device_s)


def _from_rows(rows: list[Any], computed: int, *times: float) -> Computed:
    stacked = np.stack([vector for vector, _ in rows])
    tokens = np.array([n for _, n in rows], dtype=np.int64)
    return Computed(stacked, tokens, computed, *times)
