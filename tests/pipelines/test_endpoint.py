"""The feature-extraction endpoint's answers, without HTTP or Ray: every status it can give."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from pipelines.config import ServeConfig
from pipelines.serve.endpoint import Endpoint, ModelLoader
from workers import Embedder, EmbedOptions
from workers.model_dir import read_card


def make_endpoint(
    model_dir, load_gate: threading.Event | None = None, card_dir=None, **settings
) -> Endpoint:
    """An endpoint loading model_dir (whose card is card_dir's when given: a model that fails
    to load still has the card the server read at start)."""

    def load() -> Embedder:
        if load_gate is not None:
            load_gate.wait(60)
        return Embedder.load(model_dir, threads=1)

    loader = ModelLoader(load, estimate_s=30)

    async def embed(texts, options):
        assert loader.embedder is not None
        return loader.embedder.embed(list(texts), options)

    card = read_card(card_dir or model_dir)
    return Endpoint(ServeConfig(**settings), EmbedOptions(), loader, embed, card, "minilm")


def call(endpoint, body, path="/", method="POST", **headers):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def read() -> bytes:
        return raw

    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return asyncio.run(endpoint.handle(method, path, headers, read))


@pytest.fixture(scope="module")
def endpoint(minilm_dir):
    ready = make_endpoint(minilm_dir, api_tokens=[], max_inputs=8)
    assert asyncio.run(ready.loader.wait(120))
    return ready


@pytest.mark.parametrize("path", ["/", "/models/any-name/pipeline/feature-extraction"])
def test_a_string_and_a_list_give_one_row_each_on_both_paths(endpoint, minilm_dir, path):
    reference = Embedder.load(minilm_dir).embed(["one text", "two texts"]).vectors
    single = call(endpoint, {"inputs": "one text"}, path)
    several = call(endpoint, {"inputs": ["one text", "two texts"]}, path)
    assert single.status == several.status == 200
    np.testing.assert_allclose(np.array(single.body), reference[:1], atol=1e-6)
    np.testing.assert_allclose(np.array(several.body), reference, atol=1e-6)


def test_options_are_top_level_and_change_the_vectors(endpoint, minilm_dir):
    options = EmbedOptions(normalize=False, truncation_direction="left")
    reference = Embedder.load(minilm_dir).embed(["a text"], options).vectors
    body = {"inputs": "a text", "normalize": False, "truncation_direction": "Left"}
    np.testing.assert_allclose(np.array(call(endpoint, body).body), reference, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"text": "x"}, 400, '"inputs"'),
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": ["ok", 5]}, 400, "inputs[1] is int"),
        ({"inputs": "   "}, 400, "inputs[0] is empty"),
        ({"inputs": "x", "colour": "red"}, 400, "unknown field(s) colour"),
        ({"inputs": "x", "normalize": "yes"}, 400, "normalize must be true or false"),
        ({"inputs": "x", "truncation_direction": "up"}, 400, "truncation_direction"),
        ({"inputs": ["x"] * 9}, 413, "9 inputs in one request; at most 8"),
        ({"inputs": "x", "prompt_name": "query"}, 422, "has no prompts"),
        ({"inputs": "word " * 400, "truncate": False}, 422, "402 tokens, over max_seq_length"),
    ],
)
def test_bad_requests_get_their_status_and_a_json_error(endpoint, body, status, message):
    answer = call(endpoint, body)
    assert answer.status == status and message in answer.body["error"], answer


def test_wrong_routes_and_methods(endpoint):
    assert call(endpoint, {"inputs": "x"}, "/v2/embeddings").status == 404
    wrong = call(endpoint, b"", "/", "GET")
    assert wrong.status == 405 and wrong.headers["Allow"] == "POST"
    assert call(endpoint, b"", "/health", "GET").body["status"] == "ready"


def test_the_cache_answers_a_repeat_and_says_so(endpoint, minilm_dir):
    body = {"inputs": ["cache me", "and me"]}
    first, second = call(endpoint, body), call(endpoint, body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert np.array_equal(first.body, second.body)
    assert call(endpoint, body, x_use_cache="false").headers["x-cache"] == "miss"
    other = call(endpoint, {**body, "normalize": False})  # other options: another key
    assert other.headers["x-cache"] == "miss" and not np.array_equal(other.body, first.body)
    raw = Embedder.load(minilm_dir).embed(body["inputs"], EmbedOptions(normalize=False)).vectors
    np.testing.assert_allclose(np.array(other.body), raw, atol=1e-6)


def test_tokens_are_checked_without_naming_them(minilm_dir):
    guarded = make_endpoint(minilm_dir, api_tokens=["s3cret"])
    assert asyncio.run(guarded.loader.wait(120))
    for header in (None, "Bearer wrong", "s3cret", "Basic s3cret"):
        headers = {"authorization": header} if header else {}
        answer = call(guarded, {"inputs": "x"}, **headers)
        assert answer.status == 401 and "s3cret" not in json.dumps(answer.body)
    assert call(guarded, {"inputs": "x"}, authorization="Bearer s3cret").status == 200


def test_while_loading_503_with_an_estimate_unless_the_client_waits(minilm_dir):
    gate = threading.Event()
    loading = make_endpoint(minilm_dir, load_gate=gate)
    answer = call(loading, {"inputs": "x"})
    assert answer.status == 503 and answer.body["estimated_time"] > 0
    assert "x-wait-for-model" in answer.body["error"]
    assert call(loading, b"", "/health", "GET").status == 503

    async def wait_then_open() -> int:
        async def read() -> bytes:
            return b'{"inputs": "x"}'

        waiting = asyncio.create_task(
            loading.handle("POST", "/", {"x-wait-for-model": "true"}, read)
        )
        await asyncio.sleep(0.5)
        assert not waiting.done()  # still waiting for the model
        gate.set()
        return (await waiting).status

    assert asyncio.run(wait_then_open()) == 200


def test_a_model_that_fails_to_load_is_a_500_not_a_crash(tmp_path, minilm_dir):
    broken = make_endpoint(tmp_path / "no-model", card_dir=minilm_dir)
    assert asyncio.run(broken.loader.wait(30))
    answer = call(broken, {"inputs": "x"})
    assert answer.status == 500 and "failed to load" in answer.body["error"]
    assert str(tmp_path) not in json.dumps(answer.body)  # the server's paths stay on the server
    health = call(broken, b"", "/health", "GET")
    assert health.status == 500 and str(tmp_path) not in json.dumps(health.body)


def test_an_unexpected_error_is_a_500_with_an_incident_id_and_no_internals(minilm_dir, caplog):
    endpoint = make_endpoint(minilm_dir)
    assert asyncio.run(endpoint.loader.wait(60))

    async def broken(texts, options):
        raise OSError(2, "No such file or directory", "/srv/secret/model.onnx")

    endpoint.embed = broken
    answer = call(endpoint, {"inputs": "x"}, x_use_cache="false")
    assert answer.status == 500 and "/srv/secret" not in json.dumps(answer.body)
    incident = answer.body["error"].split("incident ")[1].split(")")[0]
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
