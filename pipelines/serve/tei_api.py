"""text-embeddings-inference's routes beside /embed: GET /info and POST /tokenize, as plain
functions (no HTTP, no Ray). The keys follow TEI's, so its clients and dashboards read them; a
few of ours sit beside them (dim, model_sha256, attention).

/tokenize takes `{"inputs": str | [str], "add_special_tokens": bool, "prompt_name", "truncate",
"truncation_direction"}` and answers, per input, the tokens the model reads under those options
(TEI's `{"id", "text", "special", "start", "stop"}`), offsets in characters of the client's text
(null for special and prompt tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pipelines.config import ServeConfig
from pipelines.serve.api import OPTIONS, ApiError, json_object, options_of, texts_of
from workers import EmbedOptions
from workers.model_dir import ModelCard

if TYPE_CHECKING:  # the tokenizer's module is the replica's, loaded with the model
    from workers.prepare import Token

TOKENIZE_FIELDS = ("inputs", "add_special_tokens", *OPTIONS)
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}


@dataclass(frozen=True)
class TokenizeQuery:
    texts: tuple[str, ...]
    options: EmbedOptions
    special: bool


def info(
    card: ModelCard, settings: ServeConfig, model_id: str, device: str, runtime: str
) -> dict[str, Any]:
    """TEI's /info, and beside its keys what runs the model: device and workers.runtime."""
    return {
        "model_id": model_id,
        "model_sha": card.revision,  # TEI's: the source's revision (a hub commit, a version)
        "model_sha256": card.onnx_sha256,  # the served model.onnx itself
        "model_dtype": DTYPES.get(card.dtype, card.dtype),
        "model_type": {"embedding": {"pooling": card.pooling}},
        "dim": card.dim,
        "max_concurrent_requests": settings.max_queue,
        "max_input_length": card.max_seq_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": settings.max_batch_requests,
        "max_client_batch_size": settings.max_inputs,
        "prompts": sorted(card.prompts),
        "attention": card.attention,
        "device": device,
        "runtime": runtime,
        "version": version(),
    }


def version() -> str:
    try:
        return metadata.version("embedpipe")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def parse_tokenize(body: bytes, max_inputs: int, defaults: EmbedOptions) -> TokenizeQuery:
    payload = json_object(body, "inputs", TOKENIZE_FIELDS)
    special = payload.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise ApiError(400, f"add_special_tokens must be true or false, got {special!r}")
    texts = texts_of(payload["inputs"], max_inputs)
    return TokenizeQuery(texts, options_of(payload, defaults), special)


def tokens_answer(tokens: list[list[Token]]) -> list[list[dict[str, Any]]]:
    return [[asdict(t) for t in text] for text in tokens]
