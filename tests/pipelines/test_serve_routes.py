"""The routes beside feature extraction, without HTTP or Ray: OpenAI's /v1/embeddings, TEI's
/embed, /info, /tokenize and /metrics, `dimensions`, the timing headers, backpressure, auth."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.serve.endpoint import Endpoint
from tests.pipelines.test_endpoint import call, make_endpoint
from workers import Embedder, EmbedOptions
from workers.finish import l2_normalize

TEXTS = ["the first text to embed", "and a second, somewhat longer one to embed"]


@pytest.fixture(scope="module")
def raw_endpoint(minilm_dir):
    """Feature extraction's defaults say normalize: false (the embedding section's), so the
    OpenAI route's own defaults show."""
    ready = make_endpoint(minilm_dir, max_inputs=8, api_tokens=["tok"])
    ready.defaults = EmbedOptions(normalize=False)
    assert asyncio.run(ready.loader.wait(120))
    return ready


@pytest.fixture(scope="module")
def reference(minilm_dir):
    embedder = Embedder.load(minilm_dir)
    return lambda texts, **options: embedder.embed(texts, EmbedOptions(**options))


def auth(**headers):
    return {"authorization": "Bearer tok", **headers}


def test_openai_route_answers_normalized_vectors_usage_and_the_model_id(raw_endpoint, reference):
    answer = call(raw_endpoint, {"input": TEXTS, "model": "anything"}, "/v1/embeddings", **auth())
    assert answer.status == 200
    body = json.loads(answer.content())
    expected = reference(TEXTS)  # normalized, right truncation, no prompt
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert {d["object"] for d in body["data"]} == {"embedding"}
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected.vectors, atol=1e-6)
    tokens = int(expected.n_tokens.sum())
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_base64_is_the_float_answer_bit_for_bit(raw_endpoint):
    plain = json.loads(call(raw_endpoint, {"input": TEXTS}, "/v1/embeddings", **auth()).content())
    packed = call(
        raw_endpoint, {"input": TEXTS, "encoding_format": "base64"}, "/embeddings", **auth()
    )
    floats = np.array([d["embedding"] for d in plain["data"]], dtype=np.float32)
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in packed.body["data"]]
    )
    assert np.array_equal(decoded.view(np.uint32), floats.view(np.uint32))


def test_json_answers_parse_back_to_the_computed_float32_bits(raw_endpoint, reference):
    answer = call(raw_endpoint, {"inputs": TEXTS}, "/embed", **auth(x_use_cache="false"))
    parsed = np.array(json.loads(answer.content()), dtype=np.float32)
    assert np.array_equal(parsed.view(np.uint32), np.asarray(answer.body).view(np.uint32))
    np.testing.assert_allclose(parsed, reference(TEXTS, normalize=False).vectors, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{nope", 400, None, "not valid JSON"),
        ({"model": "m"}, 400, None, '"input"'),
        ({"input": [1, 2, 3]}, 400, None, "check_embedding_ctx_length=False"),
        ({"input": [[1, 2], [3]]}, 400, None, "token ids"),
        ({"input": "x", "encoding_format": "int8"}, 400, None, "encoding_format"),
        ({"input": "x", "temperature": 1}, 400, None, "unknown field(s) temperature"),
        ({"input": "x", "dimensions": 0}, 422, "invalid_value", "from 1 to 384"),
        ({"input": ["x"] * 9}, 413, "request_too_large", "at most 8"),
    ],
)
def test_openai_errors_come_in_openais_shape(raw_endpoint, body, status, code, message):
    answer = call(raw_endpoint, body, "/v1/embeddings", **auth())
    error = answer.body["error"]
    assert answer.status == status and message in error["message"], answer
    assert error["type"] == "invalid_request_error" and error["code"] == code
    denied = call(raw_endpoint, {"input": "x"}, "/v1/embeddings")
    assert denied.status == 401 and denied.body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/", "/embed", "/v1/embeddings"])
def test_dimensions_keep_the_first_values_then_normalize(raw_endpoint, reference, path):
    field = "input" if path.startswith("/v1") else "inputs"
    raw = reference(TEXTS, normalize=False).vectors
    asked = {field: TEXTS, "dimensions": 64}
    if field == "inputs":
        asked["normalize"] = True  # the OpenAI route normalizes by its own defaults
    body = json.loads(call(raw_endpoint, asked, path, **auth()).content())
    got = np.array([d["embedding"] for d in body["data"]] if field == "input" else body)
    assert got.shape == (2, 64)
    np.testing.assert_allclose(got, l2_normalize(raw[:, :64]), atol=1e-6)
    for wrong in (0, 385, -1, "64", True):
        refused = call(raw_endpoint, {field: "x", "dimensions": wrong}, path, **auth())
        assert refused.status == 422 and "from 1 to 384" in json.dumps(refused.body)


def test_dimensions_without_normalize_are_the_first_raw_values(raw_endpoint, reference):
    answer = call(raw_endpoint, {"inputs": TEXTS, "dimensions": 10}, "/embed", **auth())
    raw = reference(TEXTS, normalize=False).vectors
    np.testing.assert_allclose(np.asarray(answer.body), raw[:, :10], atol=1e-6)


def test_timing_headers_are_teis_in_whole_milliseconds(raw_endpoint, reference):
    fresh = call(raw_endpoint, {"inputs": TEXTS}, "/embed", **auth(x_use_cache="false"))
    names = ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time")
    assert all(fresh.headers[n].isdigit() for n in names), fresh.headers
    parts = sum(int(fresh.headers[n]) for n in names[1:])
    assert int(fresh.headers["x-compute-time"]) >= parts - 3  # each part rounds down
    tokens = reference(TEXTS, normalize=False).n_tokens.sum()
    assert int(fresh.headers["x-compute-tokens"]) == tokens
    assert fresh.headers["x-compute-type"] == "cpu"
    cached = call(raw_endpoint, {"inputs": TEXTS}, "/embed", **auth())
    assert cached.headers["x-cache"] == "hit" and cached.headers["x-compute-tokens"] == "0"


def test_info_describes_the_model_without_a_path(raw_endpoint, minilm_dir):
    answer = call(raw_endpoint, b"", "/info", "GET", **auth())
    body = answer.body
    assert answer.status == 200 and body["model_id"] == "minilm"
    assert body["model_sha256"] == raw_endpoint.card.onnx_sha256
    assert (body["dim"], body["max_input_length"], body["model_dtype"]) == (384, 256, "float32")
    assert body["max_client_batch_size"] == 8 and body["max_batch_tokens"] > 0
    assert body["version"] and body["model_type"] == {"embedding": {"pooling": "mean"}}
    assert (body["device"], body["runtime"]) == ("cpu", "onnxruntime")
    assert str(minilm_dir) not in json.dumps(body)
    assert call(raw_endpoint, b"", "/info", "GET").status == 401


def test_tokenize_gives_the_tokens_the_model_reads(raw_endpoint, minilm_dir):
    text = "Tokenize me, please!"
    answer = call(raw_endpoint, {"inputs": text}, "/tokenize", **auth())
    (tokens,) = answer.body
    preparer = Embedder.load(minilm_dir).preparer
    ids = preparer.prepare([text], EmbedOptions()).ids[0]
    assert [t["id"] for t in tokens] == ids.tolist()
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1]["text"] == "[SEP]" and tokens[-1]["special"]
    for token in tokens[1:-1]:  # offsets select the token's characters in the client's text
        spelled = text[token["start"] : token["stop"]].lower()
        assert spelled == token["text"].removeprefix("##") and not token["special"]
    bare = call(
        raw_endpoint, {"inputs": [text], "add_special_tokens": False}, "/tokenize", **auth()
    )
    assert [t["id"] for t in bare.body[0]] == ids[1:-1].tolist()


def test_tokenize_honours_truncation_like_embedding(raw_endpoint, minilm_dir):
    long = " ".join(f"w{i}" for i in range(400))
    for direction in ("left", "right"):
        options = EmbedOptions(truncation_direction=direction)
        answer = call(
            raw_endpoint, {"inputs": long, "truncation_direction": direction}, "/tokenize", **auth()
        )
        expected = Embedder.load(minilm_dir).preparer.prepare([long], options).ids[0]
        assert [t["id"] for t in answer.body[0]] == expected.tolist()
    kept = answer.body[0]  # right: the text's start
    assert long[kept[1]["start"] : kept[1]["stop"]] == "w"
    refused = call(raw_endpoint, {"inputs": long, "truncate": False}, "/tokenize", **auth())
    assert refused.status == 422 and "over max_seq_length 256" in refused.body["error"]
    unknown = call(raw_endpoint, {"inputs": "x", "prompt_name": "query"}, "/tokenize", **auth())
    assert unknown.status == 422 and "model minilm has no prompts" in unknown.body["error"]
    assert str(minilm_dir) not in unknown.body["error"]


def test_health_and_metrics_need_no_token_every_other_route_does(raw_endpoint):
    assert call(raw_endpoint, b"", "/health", "GET").status == 200
    assert call(raw_endpoint, b"", "/metrics", "GET").status == 200
    for path in (
        "/",
        "/embed",
        "/tokenize",
        "/v1/embeddings",
        "/models/m/pipeline/feature-extraction",
    ):
        assert call(raw_endpoint, {"inputs": "x", "input": "x"}, path).status == 401
    assert call(raw_endpoint, b"", "/info", "GET").status == 401


def gated(endpoint: Endpoint) -> asyncio.Event:
    """Holds every model call of `endpoint` until the returned event is set."""
    opened = asyncio.Event()
    inner = endpoint.embed

    async def embed(texts, options):
        await opened.wait()
        return await inner(texts, options)

    endpoint.embed = embed
    return opened


def test_over_max_queue_answers_429_at_once_and_the_rest_complete(minilm_dir):
    endpoint = make_endpoint(minilm_dir, max_queue=3)
    assert asyncio.run(endpoint.loader.wait(120))

    async def flood() -> list:
        opened = gated(endpoint)

        async def one(i: int, path: str):
            body = json.dumps({"input" if "v1" in path else "inputs": f"text {i}"}).encode()

            async def read() -> bytes:
                return body

            return await endpoint.handle("POST", path, {"x-use-cache": "false"}, read)

        held = [asyncio.create_task(one(i, "/embed")) for i in range(3)]
        await asyncio.sleep(0.2)
        refused = [await one(9, "/embed"), await one(10, "/v1/embeddings")]
        opened.set()
        return refused + list(await asyncio.gather(*held))

    first, second, *rest = asyncio.run(flood())
    assert (first.status, second.status) == (429, 429)
    assert int(first.headers["Retry-After"]) >= 1 and "capacity" in first.body["error"]
    assert second.body["error"]["code"] == "rate_limit_exceeded"  # OpenAI's shape there
    assert [a.status for a in rest] == [200, 200, 200]
    assert call(endpoint, {"inputs": "after"}, "/embed").status == 200


def test_metrics_are_prometheus_text_with_requests_stages_and_queue(raw_endpoint):
    call(raw_endpoint, {"inputs": ["metrics text"]}, "/embed", **auth(x_use_cache="false"))
    call(raw_endpoint, {"inputs": "x"}, "/embed")  # a 401
    answer = call(raw_endpoint, b"", "/metrics", "GET")
    assert answer.media_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.content().decode())}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["embedpipe_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("embed", "200")] >= 1 and requests[("embed", "401")] >= 1
    stages = {s.labels.get("stage") for s in families["embedpipe_request_stage_seconds"].samples}
    assert {"tokenization", "queue", "inference"} <= stages
    assert "embedpipe_queue_size" in families and "embedpipe_computed_tokens" in families
    loaded = families["embedpipe_model_loaded"].samples[0].value
    assert loaded == 1.0
