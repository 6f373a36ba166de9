"""The feature-extraction endpoint's logic: routes, auth, the model's loading state, the cache.

Kept apart from Ray Serve (server.py only adapts HTTP to it and batches the model calls), so every
answer, 503 while loading included, is tested without starting a cluster. The model loads in a
background thread: the replica is up at once and can say "loading" instead of leaving clients
hanging on a connection that nothing answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import ServeConfig
from pipelines.serve.api import ApiError, Query, bearer_ok, flag, is_api_path, parse_body
from pipelines.serve.vector_cache import VectorCache
from workers import EmbedOptions, OptionError

if TYPE_CHECKING:  # the endpoint itself never imports onnxruntime
    from workers import Embedder, Embeddings

log = logging.getLogger(__name__)

HEALTH_PATHS = ("/health", "/ready")
EmbedCall = Callable[[tuple[str, ...], EmbedOptions], Awaitable["Embeddings"]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # JSON-able
    headers: dict[str, str] = field(default_factory=dict)


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
        fingerprint: str,
    ) -> None:
        self.settings, self.defaults = settings, defaults
        self.loader, self.embed = loader, embed
        self.tokens = settings.tokens()
        self.cache = VectorCache(fingerprint, settings.cache_entries)
        self.stats: dict[str, int] = {"requests": 0, "batches": 0, "largest_batch_requests": 0}

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Callable[[], Awaitable[bytes]],
    ) -> Answer:
        """The answer to one request; whatever the request holds, never an exception."""
        self.stats["requests"] += 1
        try:
            return await self._handle(method, path, headers, body)
        except ApiError as err:
            return Answer(err.status, err.body())
        except Exception:
            # The client gets an id to quote, never the exception: its text can name the
            # server's paths and internals. The log has the whole traceback under that id.
            incident = uuid.uuid4().hex[:12]
            log.exception("request failed (incident %s)", incident)
            return Answer(500, {"error": f"internal error (incident {incident}); see the log"})

    async def _handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Callable[[], Awaitable[bytes]],
    ) -> Answer:
        if method == "GET" and path in HEALTH_PATHS:
            return self.health()
        if not is_api_path(path):
            raise ApiError(404, f"no route {path}: POST to / or /models/<name>/pipeline/...")
        if method != "POST":
            raise ApiError(405, f"{method} is not allowed here: POST a JSON body")
        if not bearer_ok(headers.get("authorization"), self.tokens):
            raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required")
        query = parse_body(await body(), self.settings.max_inputs, self.defaults)
        embedder = await self._model(flag(headers.get("x-wait-for-model"), False))
        try:
            embedder.preparer.prompt_for(query.options)
        except OptionError as err:
            raise ApiError(422, str(err)) from err
        vectors, hit = await self._vectors(query, flag(headers.get("x-use-cache"), True))
        return Answer(200, vectors.tolist(), {"x-cache": "hit" if hit else "miss"})

    def health(self) -> Answer:
        if not self.loader.done:
            loading = {"status": "loading", "estimated_time": self.loader.remaining_s()}
            return Answer(503, loading)
        if self.loader.error is not None:
            return Answer(500, {"status": "failed", "error": str(self.loader.error)})
        return Answer(200, {"status": "ready", **self.stats, "cached": len(self.cache)})

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

    async def _vectors(self, query: Query, use_cache: bool) -> tuple[np.ndarray, bool]:
        texts, options = query.texts, query.options
        rows = [self.cache.get(t, options) if use_cache else None for t in texts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            got = await self.embed(tuple(texts[i] for i in missing), options)
            for j, i in enumerate(missing):
                if got.errors[j] is not None:
                    raise ApiError(422, f"inputs[{i}]: {got.errors[j]}")
                rows[i] = got.vectors[j]
                self.cache.put(texts[i], options, got.vectors[j])
        return np.stack([r for r in rows if r is not None]), not missing
