"""Benchmark (make bench-serve): `embedpipe serve` under concurrency, packaged model on the CPU.

One replica of all-MiniLM-L6-v2 on a local Ray Serve with backpressure on (serve.max_queue,
--max-queue); single-text requests of stdlib docstrings (cycled from the benchmark corpus), sent
by 1, 16 and 128 concurrent clients in turn, with x-use-cache: false so every request reaches the
model, on the feature-extraction route (POST /) and OpenAI's (POST /v1/embeddings). A client
that gets 429 moves on to its next request (a real one would wait Retry-After). Reports, per
route and level, answers/s, p50/p99 latency of the 200s, the share answered 429 and the p99 of
those (they should come at once); `speedup`: 200s/s at 128 clients over 1 client, which is what
gathering concurrent requests into one model batch (serve.batch) buys. Then the encoding of a 64
x 1024 answer, `encode_ms_64x1024`: before (tolist + json, as the server did) and after (orjson
from the float32 array; base64 for OpenAI's), each the median of repeated runs in this process.

    python bench/serve.py --out bench/results/serve.json                (make bench-serve)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from common import CORPUS, MINILM, ROOT, exported, load_texts, write_result

LEVELS = (1, 16, 128)
ROUTES = {"feature_extraction": ("/", "inputs"), "openai": ("/v1/embeddings", "input")}
ENCODE_REPEATS = 30


def main() -> None:
    args = parse_args()
    model_dir = exported(MINILM, args.work / "minilm-fp32")
    texts = [t for t in load_texts(args.corpus) if t.strip()]
    url = start_server(model_dir, args)
    result: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2 fp32, CPU",
        "threads": args.threads,
        "requests_per_level": args.requests,
        "max_queue": args.max_queue,
        "routes": {},
    }
    for route, (path, field) in ROUTES.items():
        levels = {
            f"concurrency_{level}": asyncio.run(
                measure(url + path, field, texts, level, args.requests)
            )
            for level in LEVELS
        }
        one, many = levels["concurrency_1"], levels[f"concurrency_{LEVELS[-1]}"]
        levels["speedup"] = round(many["ok_per_s"] / one["ok_per_s"], 3)
        result["routes"][route] = levels
    result["encode_ms_64x1024"] = encode_times()
    write_result(args.out, result)


def encode_times() -> dict[str, float]:
    """Milliseconds to encode a 64 x 1024 float32 answer: before (tolist + json) and after."""
    from pipelines.serve.encode import base64_vector, json_bytes

    rows = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ways = {
        "before": lambda: json.dumps(rows.tolist()).encode(),
        "after": lambda: json_bytes(rows),
        "after_base64": lambda: json_bytes([base64_vector(r) for r in rows]),
    }
    found: dict[str, float] = {}
    for name, encode in ways.items():
        times = []
        for _ in range(ENCODE_REPEATS):
            clock = time.perf_counter()
            encoded = encode()
            times.append(time.perf_counter() - clock)
        found[name] = round(1000 * statistics.median(times), 3)
        found[f"{name}_bytes"] = len(encoded)
    back = np.array(json.loads(json_bytes(rows)), dtype=np.float32)
    assert np.array_equal(back.view(np.uint32), rows.view(np.uint32)), "not the same float32"
    packed = np.frombuffer(base64.b64decode(base64_vector(rows[0])), "<f4")
    assert np.array_equal(packed, rows[0])
    found["speedup"] = round(found["before"] / found["after"], 1)
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-serve")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=32)
    return parser.parse_args()


def start_server(model_dir: Path, args: argparse.Namespace) -> str:
    import ray

    from pipelines.config import ServeJob, load_config
    from pipelines.serve.server import start

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args.work.mkdir(parents=True, exist_ok=True)
    conf = args.work / "serve.yaml"
    conf.write_text(
        f"model: {{source: {model_dir}}}\n"
        f"workers: {{device: cpu, cpus_per_actor: {args.threads}}}\n"
        f"serve: {{port: {port}, max_batch_requests: 128, batch_wait_s: 0.005, "
        f"max_batch_tokens: 2048, max_queue: {args.max_queue}}}\n"
    )
    ray.init(include_dashboard=False, log_to_driver=False)
    start(load_config(conf, schema=ServeJob), model_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready in 300 s")


async def measure(
    url: str, field: str, texts: list[str], clients: int, requests: int
) -> dict[str, float]:
    import aiohttp

    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(32):  # warm-up: connections, the replica's first batches
        queue.put_nowait(texts[i % len(texts)])
    answered: dict[int, list[float]] = {200: [], 429: []}

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = json.dumps({field: queue.get_nowait()})
            clock = time.perf_counter()
            headers = {"content-type": "application/json", "x-use-cache": "false"}
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status not in answered:
                    raise RuntimeError(f"{answer.status}: {await answer.text()}")
            answered[answer.status].append(time.perf_counter() - clock)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(min(clients, 8))))
        for i in range(requests):
            queue.put_nowait(texts[i % len(texts)])
        for kept in answered.values():
            kept.clear()
        clock = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - clock
    ok, refused = answered[200], answered[429]
    return {
        "clients": clients,
        "ok_per_s": round(len(ok) / seconds, 1),
        "p50_ms": percentile_ms(ok, 50),
        "p99_ms": percentile_ms(ok, 99),
        "rejected_share": round(len(refused) / (len(ok) + len(refused)), 3),
        "rejected_p99_ms": percentile_ms(refused, 99),
    }


def percentile_ms(seconds: list[float], p: int) -> float | None:
    if len(seconds) < 2:
        return round(1000 * seconds[0], 2) if seconds else None
    return round(1000 * statistics.quantiles(seconds, n=100)[p - 1], 2)


if __name__ == "__main__":
    main()
