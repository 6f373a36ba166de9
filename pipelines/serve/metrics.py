"""GET /metrics: the replica's own Prometheus text, so a scraper needs no Ray metrics exporter.

One registry per endpoint (not prometheus_client's global one), so two endpoints in a process
(tests, two Serve applications) never share or clash. The names carry the `embedpipe_` prefix;
the stage histograms are TEI's (tokenization, queue, inference) under our names. Each replica
answers for itself: with serve.replicas above 1, scrape through Ray's exporter for the sum, or
read every replica's through its own requests.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUESTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "embedpipe_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "embedpipe_http_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by route",
            ["route"],
            buckets=SECONDS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "embedpipe_request_stage_seconds",
            "Seconds an embedding request spent in each stage (tokenization, queue, inference)",
            ["stage"],
            buckets=SECONDS,
            registry=registry,
        )
        self.queue = Gauge(
            "embedpipe_queue_size",
            "Embedding requests this replica holds (waiting or computing); over serve.max_queue "
            "the next gets 429",
            registry=registry,
        )
        self.batch_requests = Histogram(
            "embedpipe_batch_requests",
            "Requests gathered into one model call",
            buckets=REQUESTS,
            registry=registry,
        )
        self.texts = Counter(
            "embedpipe_texts", "Texts answered, by cache (hit, miss)", ["cache"], registry=registry
        )
        self.tokens = Counter(
            "embedpipe_computed_tokens", "Tokens run through the model", registry=registry
        )
        self.model_loaded = Gauge(
            "embedpipe_model_loaded", "1 once the model is loaded, else 0", registry=registry
        )

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)

    def stages(self, tokenization_s: float, queue_s: float, inference_s: float) -> None:
        for stage, seconds in (
            ("tokenization", tokenization_s),
            ("queue", queue_s),
            ("inference", inference_s),
        ):
            self.stage_seconds.labels(stage).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
