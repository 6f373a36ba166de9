"""Parity: the embedder against the model's reference implementation (sentence-transformers).

Both sides embed the same texts with the same options; the figure is the cosine between the two
vectors of each text (min and mean). The built-in texts run from a few words to well past 512
tokens, so truncation is part of what is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workers import Embedder, EmbedOptions

# fp32 must match the reference to float rounding; int8 trades a little accuracy for speed.
THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.95}

_SENTENCES = (
    "The parser reads one record per line and skips blank lines.",
    "Return the number of seconds since the epoch as a floating point number.",
    "A lock keeps two writers from touching the same file at once.",
    "Embeddings of similar texts lie close together in the vector space.",
    "If the queue is full, the call blocks until a slot becomes free.",
    "Große Häuser stehen am Fluss; les étés y sont chauds.",
    "Raise ValueError when the key is missing from the mapping.",
    "The scheduler retries a failed task with exponential backoff.",
    "Numbers like 3.14159, 2.71828 and 1e-9 appear in scientific text.",
    "She sells sea shells by the sea shore, or so the rhyme goes.",
)


def builtin_texts() -> list[str]:
    """About 40 texts from three words to roughly 1,200 tokens, the same every time."""
    texts = [s.split(",")[0] for s in _SENTENCES]
    texts += list(_SENTENCES)
    for size in (2, 3, 5, 8, 13, 21):
        texts += [" ".join(_SENTENCES[(i + k) % 10] for k in range(size)) for i in range(3)]
    texts += [" ".join(_SENTENCES * reps) for reps in (6, 12, 20)]
    return texts


def canary_texts() -> list[str]:
    """The card's probe texts: short, non-ASCII, medium, and one past any max_seq_length (so
    the longest sequences the device will see are among them)."""
    texts = builtin_texts()
    return [texts[3], texts[15], texts[-4], texts[-1]]


@dataclass(frozen=True)
class ParityReport:
    min_cosine: float
    mean_cosine: float
    n_texts: int
    threshold: float
    reference: str

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def reference_embed(st_model: Any, texts: Sequence[str], options: EmbedOptions) -> np.ndarray:
    """What sentence-transformers gives for these texts and options.

    With normalize off, the model's own Normalize module is left out too: `normalize: false`
    means the raw pooled vector (as the Inference API returns it), which such models otherwise
    never show.
    """
    if not options.normalize:
        st_model = _without_normalize(st_model)
    tokenizer = st_model.tokenizer
    side = tokenizer.truncation_side
    tokenizer.truncation_side = options.truncation_direction
    try:
        kwargs = {"prompt_name": options.prompt_name} if options.prompt_name else {}
        out = st_model.encode(
            list(texts),
            normalize_embeddings=options.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )
    finally:
        tokenizer.truncation_side = side
    return np.asarray(out, dtype=np.float32)


def _without_normalize(st_model: Any) -> Any:
    from sentence_transformers import SentenceTransformer

    modules = [m for m in st_model if type(m).__name__ != "Normalize"]
    if len(modules) == len(st_model):
        return st_model
    bare = SentenceTransformer(modules=modules, device="cpu", prompts=st_model.prompts)
    bare.default_prompt_name = st_model.default_prompt_name
    return bare


def measure(
    embedder: Embedder,
    st_model: Any,
    texts: Sequence[str],
    threshold: float,
    reference: np.ndarray | None = None,
) -> ParityReport:
    """reference: st_model's vectors for texts when already computed (default options)."""
    import sentence_transformers

    options = EmbedOptions()
    ours = embedder.embed(texts, options)
    if rejected := [(i, e) for i, e in enumerate(ours.errors) if e]:
        i, reason = rejected[0]
        raise ValueError(f"{len(rejected)} parity text(s) rejected; text {i}: {reason}")
    if reference is None:
        reference = reference_embed(st_model, texts, options)
    sims = cosines(ours.vectors, reference)
    return ParityReport(
        min_cosine=float(sims.min()),
        mean_cosine=float(sims.mean()),
        n_texts=len(texts),
        threshold=threshold,
        reference=f"sentence-transformers {sentence_transformers.__version__}",
    )
