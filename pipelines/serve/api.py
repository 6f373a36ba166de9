"""The feature-extraction request contract, as plain functions (no HTTP, no Ray).

A request body is `{"inputs": str | [str], "normalize": bool, "prompt_name": str, "truncate":
bool, "truncation_direction": "Left" | "Right", "dimensions": int}` with the options at the top
level, as the Hugging Face task spec and huggingface_hub send them (and TEI's /embed, which adds
`dimensions`). Everything a client can get wrong becomes an ApiError with the HTTP status it earns
(400 malformed, 413 too large, 422 not embeddable), so the server maps errors to answers in one
place and no input can raise anything else.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from workers import EmbedOptions, OptionError

OPTIONS = ("normalize", "prompt_name", "truncate", "truncation_direction")
FIELDS = ("inputs", *OPTIONS, "dimensions")
# The second path huggingface_hub and the Inference API use: /models/<name>/pipeline/<task>
MODEL_PATH = re.compile(r"^/models/[^/]+(/[^/]+)*/pipeline/feature-extraction/?$")


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}  # e.g. Retry-After with a 429, Allow with a 405
        self.extra = extra  # more fields of the JSON answer, e.g. estimated_time with a 503

    def body(self) -> dict[str, object]:
        return {"error": self.message, **self.extra}


@dataclass(frozen=True)
class Query:
    texts: tuple[str, ...]
    options: EmbedOptions
    dimensions: int | None = None  # Matryoshka: keep the first d values (checked against dim)


def is_api_path(path: str) -> bool:
    return path in ("", "/") or MODEL_PATH.match(path) is not None


def parse_body(body: bytes, max_inputs: int, defaults: EmbedOptions) -> Query:
    payload = json_object(body, "inputs", FIELDS)
    texts = texts_of(payload["inputs"], max_inputs)
    return Query(texts, options_of(payload, defaults), payload.get("dimensions"))


def json_object(body: bytes, texts: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """The body as a JSON object holding `texts` (the field of the texts) and no field beyond
    `fields`; a 400 naming what is wrong otherwise."""
    payload = load_json(body)
    if not isinstance(payload, dict) or texts not in payload:
        raise ApiError(400, f'the body must be a JSON object with "{texts}" (a string or a list)')
    if unknown := sorted(set(payload) - set(fields)):
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    return payload


def load_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}") from err


def check_dimensions(dimensions: object, dim: int) -> int | None:
    """`dimensions` as given (None: all of them); 0 < d <= dim, else 422 naming the range."""
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 0 < dimensions <= dim:
        raise ApiError(
            422, f"dimensions must be an integer from 1 to {dim} (the model's), got {dimensions!r}"
        )
    return dimensions


def texts_of(inputs: object, max_inputs: int, name: str = "inputs") -> tuple[str, ...]:
    """The texts of a request's `name` field: a string or a non-empty list of them."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts:
        raise ApiError(400, f'"{name}" must be a string or a non-empty list of strings')
    if len(texts) > max_inputs:
        raise ApiError(413, f"{len(texts)} inputs in one request; at most {max_inputs}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f"{name}[{i}] is {type(text).__name__}, not a string")
        if not text.strip():
            raise ApiError(400, f"{name}[{i}] is empty or only whitespace")
    return tuple(texts)


def options_of(payload: dict[str, object], defaults: EmbedOptions) -> EmbedOptions:
    """The request's options over the server's defaults; EmbedOptions checks the values."""
    given = {k: payload[k] for k in OPTIONS if payload.get(k) is not None}
    try:
        return dataclasses.replace(defaults, **given)  # type: ignore[arg-type]
    except OptionError as err:
        raise ApiError(400, str(err)) from err


def bearer_ok(header: str | None, tokens: frozenset[str]) -> bool:
    """True when no tokens are configured, or the header carries one of them."""
    if not tokens:
        return True
    scheme, _, token = (header or "").partition(" ")
    # compare_digest over every token: the time taken does not tell how close a guess was
    found = [hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens]
    return scheme.lower() == "bearer" and any(found)


def flag(header: str | None, default: bool) -> bool:
    """An x-use-cache / x-wait-for-model header: true/false, 1/0, yes/no (any case)."""
    if header is None or not header.strip():
        return default
    value = header.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ApiError(400, f"header value {header!r} must be true or false")
