"""Chunking: a long text as windows of tokens that each fit the model, with character offsets.

A text is tokenized once (TextPreparer.token_spans, a piece at a time so a 10 MB document does
not hold millions of token objects), then cut into windows of at most `budget` tokens: the
window size less the special tokens and the prompt, which every chunk gets. Where a window
ends, the cut moves back to a better boundary within its last few tokens when there is one: a
paragraph or sentence end first, then whitespace, then a word start (the tokenizer's word
boundaries, at punctuation too); only a run of letters longer than that falls back to a cut
inside a word. Consecutive windows share `overlap` tokens, the shared part also starting at a
boundary.

Each window is named by characters of the original text, `text[char_start:char_stop]` (the
first window from 0, the last to the end), and it is that substring which is embedded, so a
chunk row's vector is the model's vector of exactly the text its offsets name. Cut at a
boundary, the substring tokenizes to the window's own tokens (tokenizers split words before
anything else), so it fits. Windows are a function of the tokens before them: a document whose
last paragraph changed keeps its earlier windows, and their vectors come from the cache.

Pooling (`pool: mean`) is numpy: the chunks' vectors averaged with their token counts as weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.finish import l2_normalize

POOLS = ("none", "mean")
LOOK_BACK = 16  # tokens at the end of a window searched for a better place to cut
SENTENCE_ENDS = ".!?\u3002\uff01\uff1f"  # and the full-width ones of CJK text
# How good a place is to cut before a token: after a paragraph or sentence end, at
# whitespace, at a word start, or anywhere (inside a word).
PARAGRAPH, WHITESPACE, WORD, ANYWHERE = 3, 2, 1, 0


@dataclass(frozen=True)
class Chunking:
    """embedding.chunking: `tokens` per window (with special tokens and prompt), `overlap`
    tokens shared by neighbours, `pool` none (a row per chunk) or mean (a row per text)."""

    tokens: int
    overlap: int = 0
    pool: str = "none"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"chunking pool must be none or mean, got {self.pool!r}")
        if self.tokens < 1 or self.overlap < 0 or self.overlap >= self.tokens:
            raise ValueError(
                f"chunking needs tokens >= 1 and 0 <= overlap < tokens, got tokens "
                f"{self.tokens}, overlap {self.overlap}"
            )


@dataclass(frozen=True)
class TokenSpans:
    """A text's tokens (no special tokens): each one's characters, and whether it starts a word."""

    starts: np.ndarray  # (n,) int64 character offsets
    stops: np.ndarray  # (n,) int64
    word_starts: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class Windows:
    """One text's chunks: character offsets into it and content tokens (no specials, no prompt)."""

    char_starts: np.ndarray  # (k,) int64
    char_stops: np.ndarray  # (k,) int64
    n_tokens: np.ndarray  # (k,) int32

    def __len__(self) -> int:
        return len(self.char_starts)

    def texts(self, text: str) -> list[str]:
        bounds = zip(self.char_starts.tolist(), self.char_stops.tolist(), strict=True)
        return [text[a:b] for a, b in bounds]


def rank(text: str, spans: TokenSpans, i: int) -> int:
    """How good a place token i (> 0) is to cut before: PARAGRAPH .. ANYWHERE."""
    stop, start = int(spans.stops[i - 1]), int(spans.starts[i])
    if start > stop:
        if text[stop - 1] in SENTENCE_ENDS or "\n" in text[stop:start]:
            return PARAGRAPH
        return WHITESPACE
    return WORD if spans.word_starts[i] else ANYWHERE


def windows(text: str, spans: TokenSpans, budget: int, overlap: int = 0) -> Windows:
    """The text's chunks of at most `budget` tokens, neighbours sharing about `overlap`.
    Boundaries are ranked only near each cut, so a long text costs its tokenizing."""
    n = len(spans)
    if n <= budget:
        return _windows([0], [len(text)], [n])
    if not 0 <= overlap < budget:
        raise ValueError(f"overlap {overlap} must be below the window's {budget} text tokens")
    look = min(LOOK_BACK, max(1, budget // 4))
    starts, stops, counts = [], [], []
    first = 0
    while True:
        end = first + budget
        cut = n if end >= n else _best_cut(text, spans, max(first + 1, end - look + 1), end + 1)
        starts.append(0 if first == 0 else int(spans.starts[first]))
        stops.append(len(text) if cut == n else int(spans.stops[cut - 1]))
        counts.append(cut - first)
        if cut == n:
            return _windows(starts, stops, counts)
        # the next window starts `overlap` tokens back, moved forward to a boundary
        back = max(first + 1, cut - overlap)
        first = _overlap_start(text, spans, back, cut) if overlap else cut


def _best_cut(text: str, spans: TokenSpans, lo: int, hi: int) -> int:
    """The token in [lo, hi) of the highest rank to cut before, the last such (the window
    ending there is the longest)."""
    ranks = [rank(text, spans, i) for i in range(lo, hi)]
    best = max(ranks)
    return lo + len(ranks) - 1 - ranks[::-1].index(best)


def _overlap_start(text: str, spans: TokenSpans, back: int, cut: int) -> int:
    """Where the next window starts: the first whitespace (else word start) in [back, cut],
    so the overlap is as long as asked where a boundary allows; else `back`, inside a word."""
    ranks = [rank(text, spans, i) for i in range(back, cut + 1)]
    for level in (WHITESPACE, WORD):
        found = [k for k, r in enumerate(ranks) if r >= level]
        if found:
            return back + found[0]
    return back


def _windows(starts: list[int], stops: list[int], counts: list[int]) -> Windows:
    return Windows(
        np.asarray(starts, np.int64), np.asarray(stops, np.int64), np.asarray(counts, np.int32)
    )


def pooled(vectors: np.ndarray, weights: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Per text 0..n-1, the mean of its chunks' vectors (`owners` says whose each chunk is)
    weighted by their token counts; float32, unnormalized (the caller normalizes)."""
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, owners, vectors.astype(np.float64) * weights[:, None])
    totals = np.bincount(owners, weights=weights, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / totals[:, None]).astype(np.float32)


def pooled_normalized(
    vectors: np.ndarray, weights: np.ndarray, owners: np.ndarray, n: int, normalize: bool
) -> np.ndarray:
    found = pooled(vectors, weights, owners, n)
    return l2_normalize(found) if normalize else found
