"""POST /v1/embeddings: OpenAI's embeddings contract, as plain functions (no HTTP, no Ray).

The body is `{"input": str | [str], "model": str, "encoding_format": "float" | "base64",
"dimensions": int, "user": str}`; the answer is `{"object": "list", "data": [{"object":
"embedding", "index", "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`, and an
error is `{"error": {"message", "type", "param", "code"}}`, the shape the OpenAI SDK raises from.
The texts' options come from serve.openai (OpenAI's API has none). `model` is accepted whatever
it names, as TEI does: one server serves one model, and the answer names it. base64 is what the
SDK asks for by default: each vector's little-endian float32 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.serve.api import ApiError, Query, json_object, texts_of
from pipelines.serve.encode import base64_vector, vectors
from workers import EmbedOptions

FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
ENCODINGS = ("float", "base64")
# (type, code) of an error by HTTP status, as OpenAI's API words them
KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "invalid_value"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "model_loading"),
}


@dataclass(frozen=True)
class OpenAIQuery:
    query: Query
    encoding: str  # float | base64


def parse_openai(body: bytes, max_inputs: int, options: EmbedOptions) -> OpenAIQuery:
    payload = json_object(body, "input", FIELDS)
    given = payload["input"]
    if _token_ids(given):
        # LangChain's OpenAIEmbeddings sends tiktoken's ids unless told not to: they are not
        # this model's tokens, so embedding them would be wrong without a word of warning.
        raise ApiError(
            400,
            '"input" holds token ids; this server embeds text only (token ids are specific to '
            "a tokenizer). In LangChain, set OpenAIEmbeddings(check_embedding_ctx_length=False)",
        )
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    for name in ("model", "user"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise ApiError(400, f'"{name}" must be a string')
    query = Query(texts_of(given, max_inputs, "input"), options, payload.get("dimensions"))
    return OpenAIQuery(query, encoding)


def _token_ids(given: object) -> bool:
    """A list of ints, or of lists of ints: OpenAI's token-array inputs."""
    if not isinstance(given, list) or not given:
        return False
    first = given[0]
    return isinstance(first, int) or (
        isinstance(first, list) and bool(first) and isinstance(first[0], int)
    )


def openai_answer(rows: np.ndarray, tokens: int, model: str, encoding: str) -> dict[str, Any]:
    if encoding == "base64":
        embeddings: list[Any] = [base64_vector(row) for row in rows]
    else:
        embeddings = list(vectors(rows))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openai_error(err: ApiError) -> dict[str, Any]:
    kind, code = KINDS.get(
        err.status, ("server_error" if err.status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": err.message, "type": kind, "param": None, "code": code}}
