"""`embedpipe serve` on a local Ray Serve: huggingface_hub's client, raw HTTP, and load."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from export.parity import cosines
from pipelines.config import ServeJob, load_config
from tests.pipelines.helpers import fetch, free_port, get_json, post, wait_healthy
from workers import Embedder, EmbedOptions

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory, minilm_dir):
    import ray
    from ray import serve

    from pipelines.serve.server import start

    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    conf = root / "serve.yaml"
    conf.write_text(  # serve's sections only, as `embedpipe serve` reads them
        f"model: {{source: {minilm_dir}}}\n"
        "workers: {device: cpu, cpus_per_actor: 2}\n"
        f"serve: {{port: {port}, api_tokens: [{TOKEN}], max_inputs: 16, max_queue: 512, "
        "max_body_bytes: 100000, max_batch_requests: 64, batch_wait_s: 0.01}\n"
    )
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        start(load_config(conf, schema=ServeJob), minilm_dir)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(minilm_dir):
    embedder = Embedder.load(minilm_dir)
    return lambda texts, **options: embedder.embed(texts, EmbedOptions(**options)).vectors


@pytest.fixture(scope="module")
def token_counts(minilm_dir):
    embedder = Embedder.load(minilm_dir)
    return lambda texts: int(embedder.embed(texts).n_tokens.sum())


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{}, {"normalize": False}, {"truncate": True, "truncation_direction": "Left"}],
    ids=["defaults", "normalize-false", "truncate-left"],
)
def test_huggingface_hub_client_gets_the_pipelines_vectors(
    server, reference, parity_texts, options
):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=server, token=TOKEN)
    text = max(parity_texts, key=len)  # long enough that the direction matters
    single = client.feature_extraction(text, **options)
    several = client.feature_extraction([text, "a short one"], **options)  # type: ignore[arg-type]
    direct = {k.lower() if isinstance(k, str) else k: v for k, v in options.items()}
    direct = {k: v.lower() if isinstance(v, str) else v for k, v in direct.items()}
    expected = reference([text, "a short one"], **direct)
    assert single.shape == (1, 384) and several.shape == (2, 384)
    assert cosines(single, expected[:1]).min() >= 0.99999
    assert cosines(several, expected).min() >= 0.99999
    np.testing.assert_allclose(
        np.linalg.norm(several, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-5
    )


@pytest.mark.slow
def test_raw_http_errors_routes_and_the_cache_header(server):
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"inputs": ["cached text"]}).encode()
    path = "/models/thenlper/gte-large/pipeline/feature-extraction"
    first = post(server + path, body, **auth)
    second = post(server + "/", body, **auth)
    assert (first[0], second[0]) == (200, 200) and first[2] == second[2]
    assert (first[1]["x-cache"], second[1]["x-cache"]) == ("miss", "hit")
    cases = [
        (b'{"inputs": 5}', auth, 400, "must be a string"),
        (body, {}, 401, "Bearer"),
        (json.dumps({"inputs": ["x"] * 17}).encode(), auth, 413, "at most 16"),
        (json.dumps({"inputs": "y" * 200_000}).encode(), auth, 413, "at most 100000"),
        (json.dumps({"inputs": "word " * 300, "truncate": False}).encode(), auth, 422, "tokens"),
        (json.dumps({"inputs": "x", "prompt_name": "query"}).encode(), auth, 422, "prompts"),
    ]
    for payload, headers, status, message in cases:
        code, _, answer = post(server + "/", payload, **headers)
        assert code == status and message in answer["error"], (status, answer)
    code, health = get_json(server + "/health")
    assert code == 200 and health["status"] == "ready"


def gated_deployment():
    """The server, with its model load held until a file appears: loading made observable."""
    from pipelines.serve.endpoint import ModelLoader
    from pipelines.serve.server import FeatureExtraction

    class GatedLoad(FeatureExtraction.func_or_class):  # type: ignore[name-defined,misc]
        def __init__(self, model_dir, settings, defaults, runtime, gate):
            super().__init__(model_dir, settings, defaults, runtime)

            def load():
                while not Path(gate).exists():
                    time.sleep(0.05)
                return Embedder.load(model_dir, **runtime)

            self.endpoint.loader = ModelLoader(load, estimate_s=30)

    return GatedLoad


@pytest.mark.slow
def test_503_while_the_model_loads_unless_the_client_waits(server, minilm_dir, tmp_path):
    import threading

    from ray import serve

    gate = tmp_path / "load-now"
    settings = {"api_tokens": [TOKEN]}
    runtime = {"device": "cpu", "threads": 1}
    app = serve.deployment(gated_deployment()).bind(
        str(minilm_dir), settings, {}, runtime, str(gate)
    )
    serve.run(app, name="gated", route_prefix="/gated")
    url, auth = f"{server}/gated", {"authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"inputs": "x"}).encode()
    code, _, answer = post(url + "/", body, **auth)
    assert code == 503 and answer["estimated_time"] > 0 and "x-wait-for-model" in answer["error"]
    assert get_json(url + "/health")[0] == 503
    waited: list[int] = []
    waiter = threading.Thread(
        target=lambda: waited.append(
            post(url + "/", body, **auth, **{"x-wait-for-model": "true"})[0]
        )
    )
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive(), "the client that asked to wait was answered before the model loaded"
    gate.touch()
    waiter.join(timeout=60)
    assert waited == [200]
    serve.delete("gated")


@pytest.mark.slow
def test_a_replica_on_openvino_answers_the_fp32_vectors(server, minilm_dir, reference, tmp_path):
    """workers.runtime openvino reaches the replicas through the same application() as serve."""
    from ray import serve

    from pipelines.serve.server import application

    conf = tmp_path / "openvino.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        "workers: {device: auto, cpus_per_actor: 1, runtime: openvino}\n"
        f"serve: {{api_tokens: [{TOKEN}]}}\n"
    )
    serve.run(
        application(load_config(conf, schema=ServeJob), minilm_dir), name="ov", route_prefix="/ov"
    )
    texts = ["OpenVINO runs this replica.", "a second text, a little longer than the first"]
    body = json.dumps({"inputs": texts}).encode()
    code, _, answer = post(
        f"{server}/ov/", body, **{"authorization": f"Bearer {TOKEN}", "x-wait-for-model": "true"}
    )
    _, _, described = fetch(f"{server}/ov/info", authorization=f"Bearer {TOKEN}")
    serve.delete("ov")
    assert json.loads(described)["runtime"] == "openvino"
    assert json.loads(described)["device"] == "cpu"
    assert code == 200
    got = np.array(answer, dtype=np.float32)
    assert np.abs(got - reference(texts)).max() <= 1e-5


@pytest.mark.slow
def test_200_clients_5000_requests_all_correct_and_batched(server, reference, parity_texts):
    import aiohttp

    texts = [t for t in parity_texts if t.strip()]
    expected = dict(zip(texts, reference(texts), strict=True))
    jobs = asyncio.Queue()
    for i in range(5000):  # one in five computed (x-use-cache: false), the rest from the cache
        jobs.put_nowait((texts[(i * 7) % len(texts)], i % 5 == 0))
    failures: list[str] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not jobs.empty():
            text, fresh = jobs.get_nowait()
            headers = {"authorization": f"Bearer {TOKEN}", "x-use-cache": str(not fresh)}
            async with session.post(server, json={"inputs": text}, headers=headers) as answer:
                if answer.status != 200:
                    failures.append(f"{answer.status}: {await answer.text()}")
                    continue
                got = np.array(await answer.json(), dtype=np.float32)
            if cosines(got, expected[text][None]).min() < 0.99999:
                failures.append(f"wrong vector for {text[:40]!r}")

    async def load() -> None:
        limits = aiohttp.TCPConnector(limit=200)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=limits, timeout=timeout) as session:
            await asyncio.gather(*(client(session) for _ in range(200)))

    asyncio.run(load())
    assert failures == [], failures[:5]
    _, health = get_json(server + "/health")
    assert health["largest_batch_requests"] > 1 and health["requests"] >= 5000


@pytest.mark.slow
def test_request_batch_and_latency_metrics_reach_rays_metrics(server):
    import ray

    post(server + "/", json.dumps({"inputs": "metrics"}).encode(), authorization=f"Bearer {TOKEN}")
    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = ("embedpipe_requests", "embedpipe_request_seconds", "embedpipe_batch_requests")
    deadline, exported = time.monotonic() + 90, ""
    while not all(name in exported for name in wanted):
        assert time.monotonic() < deadline, f"not exported: {wanted}"
        time.sleep(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            exported = answer.read().decode()
    assert 'status="200"' in exported


@pytest.mark.slow
@pytest.mark.parametrize(
    "encoding", [None, "float", "base64"], ids=["sdk-default", "float", "base64"]
)
def test_openai_and_huggingface_clients_give_the_same_vectors(
    server, reference, token_counts, parity_texts, encoding
):
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    texts = [max(parity_texts, key=len), "a short one"]
    client = OpenAI(base_url=server + "/v1", api_key=TOKEN, max_retries=0)
    chosen = {} if encoding is None else {"encoding_format": encoding}
    got = client.embeddings.create(input=texts, model="thenlper/gte-large", **chosen)
    vectors = np.array([as_floats(d.embedding) for d in got.data], dtype=np.float32)
    hub = InferenceClient(model=server, token=TOKEN).feature_extraction(texts)  # type: ignore[arg-type]
    assert vectors.shape == (2, 384) and [d.index for d in got.data] == [0, 1]
    assert cosines(vectors, hub).min() >= 0.99999
    assert cosines(vectors, reference(texts)).min() >= 0.99999
    assert got.model == "minilm-fp32"  # the export's directory name, not its path
    assert got.usage.prompt_tokens == got.usage.total_tokens == token_counts(texts)
    short = client.embeddings.create(input="a short one", model="m", dimensions=128, **chosen)
    cut = as_floats(short.data[0].embedding)
    assert cut.shape == (128,) and abs(np.linalg.norm(cut) - 1) < 1e-5


def as_floats(embedding: list[float] | str) -> np.ndarray:
    """An SDK embedding: floats, or (encoding_format="base64" asked by the caller, which the SDK
    hands back as it came) little-endian float32 bytes in base64."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), "<f4")
    return np.array(embedding, dtype=np.float32)


@pytest.mark.slow
def test_openai_client_raises_the_servers_errors(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="from 1 to 384"):
        client.embeddings.create(input="x", model="m", dimensions=1000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            input="x", model="m"
        )


@pytest.mark.slow
def test_tei_routes_metrics_and_timing_headers_over_http(server):
    from prometheus_client.parser import text_string_to_metric_families

    auth = {"authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"inputs": ["tei route"], "dimensions": 16}).encode()
    code, headers, vectors = post(server + "/embed", body, **auth)
    assert code == 200 and np.array(vectors).shape == (1, 16)
    assert all(headers[h].isdigit() for h in ("x-compute-time", "x-inference-time", "x-queue-time"))
    code, _, info = fetch(server + "/info", **auth)
    assert code == 200 and json.loads(info)["model_id"] == "minilm-fp32"
    code, _, tokens = post(
        server + "/tokenize", json.dumps({"inputs": "hi there"}).encode(), **auth
    )
    assert code == 200 and [t["text"] for t in tokens[0]] == ["[CLS]", "hi", "there", "[SEP]"]
    code, headers, text = fetch(server + "/metrics")  # no token needed
    families = {f.name for f in text_string_to_metric_families(text.decode())}
    assert code == 200 and {"embedpipe_http_requests", "embedpipe_queue_size"} <= families
    assert fetch(server + "/info")[0] == 401
    code, _, missing = post(server + "/v2/nothing", body, **auth)
    assert code == 404 and "/v1/embeddings" in missing["error"]


@pytest.mark.slow
def test_a_flood_over_max_queue_gets_only_200_or_429(server, minilm_dir):
    import aiohttp
    from ray import serve

    from pipelines.serve.server import application

    small = ServeJob.model_validate(
        {
            "model": {"source": str(minilm_dir)},
            "workers": {"device": "cpu", "cpus_per_actor": 1},
            "serve": {"max_queue": 4, "api_tokens": [TOKEN]},
        }
    )
    serve.run(application(small, minilm_dir), name="small", route_prefix="/small")
    wait_healthy(server + "/small")
    headers = {"authorization": f"Bearer {TOKEN}", "x-use-cache": "false"}
    answers: list[tuple[int, str | None]] = []

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        for i in range(4):
            text = f"flood {k} {i} " + "word " * 100
            async with session.post(
                server + "/small/embed", json={"inputs": text}, headers=headers
            ) as got:
                await got.read()
                answers.append((got.status, got.headers.get("Retry-After")))

    async def flood() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            await asyncio.gather(*(client(session, k) for k in range(48)))

    try:
        asyncio.run(flood())
    finally:
        serve.delete("small")
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) > 0
    assert all(retry is not None and int(retry) >= 1 for s, retry in answers if s == 429)
