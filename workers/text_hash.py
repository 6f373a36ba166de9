"""`text_hash`: what identifies a text to the cache, and the column every part file carries.

The hash is BLAKE2b with a 16-byte digest over the UTF-8 bytes of the text exactly as the model
reads it, that is after the prompt is applied (`prompts[prompt_name] + text`); in Python,
`hashlib.blake2b((prompt + text).encode("utf-8", "surrogatepass"), digest_size=16).digest()`.

Why 128 bits is enough: for n distinct texts, the chance that any two share a digest is about
n**2 / 2**129, so 1.5e-19 for ten billion texts, far below the odds of a disk returning a wrong
bit. BLAKE2b is a cryptographic hash, so texts cannot be crafted to collide short of ~2**64
hash evaluations, and it runs at about a gigabyte a second in hashlib, well ahead of tokenizing.
The digest covers the text only: the model and the options that also decide a vector are
checked per output (its fingerprint) before any of its vectors is reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HASH_BYTES = 16
HASH_DTYPE = np.dtype(f"S{HASH_BYTES}")  # compares as raw bytes: sorts and searches in numpy


def text_hash(prompt: str, text: str) -> bytes:
    return digest128(prompt + text)


def digest128(value: str) -> bytes:
    """BLAKE2b-128 of a string's UTF-8 bytes: the text hash, and the id digests of the run's
    repeat detection. surrogatepass: a lone surrogate (from a JSON "\ud800" escape) still
    hashes, to its own digest, instead of failing the whole task."""
    raw = value.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=HASH_BYTES).digest()


@dataclass(frozen=True)
class TextDigest:
    """A task's text digests, row by row."""

    hashes: np.ndarray  # (rows,) HASH_DTYPE; zeros where missing
    missing: np.ndarray  # (rows,) bool: no text to hash (null, empty, not a string)


def text_hashes(prompt: str, texts: Sequence[object]) -> TextDigest:
    """Digests of texts and where there is none: a null or non-string value, or an empty text,
    which no output holds a vector for."""
    missing = np.array([not (isinstance(t, str) and t) for t in texts], dtype=bool)
    digests = np.zeros(len(texts), dtype=HASH_DTYPE)
    for row, text in enumerate(texts):
        if not missing[row]:
            digests[row] = text_hash(prompt, str(text))
    return TextDigest(digests, missing)


def locate(sorted_hashes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per wanted digest, its position in `sorted_hashes`, or -1 where it is not there."""
    if len(sorted_hashes) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_hashes, wanted), len(sorted_hashes) - 1)
    return np.where(sorted_hashes[at] == wanted, at, -1)
