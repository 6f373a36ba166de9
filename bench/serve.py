"""Benchmark (make bench-serve): `embedpipe serve` under concurrency, packaged model on the CPU.

One replica of all-MiniLM-L6-v2 on a local Ray Serve; single-text requests of stdlib docstrings
(cycled from the benchmark corpus), sent by 1, 16 and 128 concurrent clients in turn, with
x-use-cache: false so every request reaches the model. Reports requests/s and p50/p99 latency for
each, and `speedup`: requests/s at 128 clients over 1 client, which is what gathering concurrent
requests into one model batch (serve.batch) buys.

    python bench/serve.py --out bench/results/serve.json                (make bench-serve)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import CORPUS, MINILM, ROOT, exported, load_texts, write_result

LEVELS = (1, 16, 128)


def main() -> None:
    args = parse_args()
    model_dir = exported(MINILM, args.work / "minilm-fp32")
    texts = [t for t in load_texts(args.corpus) if t.strip()]
    url = start_server(model_dir, args)
    result: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2 fp32, CPU",
        "threads": args.threads,
        "requests_per_level": args.requests,
    }
    for level in LEVELS:
        result[f"concurrency_{level}"] = asyncio.run(measure(url, texts, level, args.requests))
    one, many = result["concurrency_1"], result[f"concurrency_{LEVELS[-1]}"]
    result["speedup"] = round(many["requests_per_s"] / one["requests_per_s"], 3)
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-serve")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def start_server(model_dir: Path, args: argparse.Namespace) -> str:
    import ray

    from pipelines.config import load_config
    from pipelines.serve.server import start

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args.work.mkdir(parents=True, exist_ok=True)
    conf = args.work / "serve.yaml"
    conf.write_text(
        f"model: {{source: {model_dir}}}\n"
        f"input: {{path: {args.work}}}\noutput: {{path: {args.work / 'out'}}}\n"
        f"workers: {{device: cpu, cpus_per_actor: {args.threads}}}\n"
        f"serve: {{port: {port}, max_batch_requests: 128, batch_wait_s: 0.005, "
        "max_batch_tokens: 2048}\n"
    )
    ray.init(include_dashboard=False, log_to_driver=False)
    start(load_config(conf), model_dir)
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


async def measure(url: str, texts: list[str], clients: int, requests: int) -> dict[str, float]:
    import aiohttp

    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(32):  # warm-up: connections, the replica's first batches
        queue.put_nowait(texts[i % len(texts)])
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = json.dumps({"inputs": queue.get_nowait()})
            clock = time.perf_counter()
            headers = {"content-type": "application/json", "x-use-cache": "false"}
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{answer.status}: {await answer.text()}")
            latencies.append(time.perf_counter() - clock)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(min(clients, 8))))
        for i in range(requests):
            queue.put_nowait(texts[i % len(texts)])
        latencies.clear()
        clock = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - clock
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * cuts[49], 2),
        "p99_ms": round(1000 * cuts[98], 2),
    }


if __name__ == "__main__":
    main()
