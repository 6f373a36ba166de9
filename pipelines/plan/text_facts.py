"""What the plan needs to know of one sampled text: its length in tokens before truncation, the
tokens the model will run for it under the config, its chunks, and the hashes the run would
look up in run.cache_from (the text's, or under chunking each chunk's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.chunker import Chunker
from workers.chunking import Chunking
from workers.options import EmbedOptions
from workers.prepare import TextPreparer
from workers.text_hash import text_hash


@dataclass(frozen=True)
class TextFacts:
    length: int  # tokens of prompt + text + special tokens, nothing cut
    model_tokens: int  # what the model runs: cut to max_seq_length, 0 if rejected, or chunks'
    chunks: int  # windows under embedding.chunking, else 1 (0 when rejected)
    hashes: tuple[bytes, ...]  # text_hash of what is embedded: the text, or each chunk


class TextMeasure:
    """Measures texts as a run with these options and this model would embed them."""

    def __init__(
        self,
        preparer: TextPreparer,
        max_seq_length: int,
        options: EmbedOptions,
        chunking: Chunking | None,
    ) -> None:
        self.preparer = preparer
        self.max_seq_length = max_seq_length
        self.options = options
        self.prompt = preparer.prompt_for(options)
        self.chunker = (
            None if chunking is None else Chunker(preparer, max_seq_length, chunking, options)
        )
        # what every chunk gets beside its text: the special tokens and the prompt's
        self.frame = preparer.specials + preparer.prompt_tokens(options) if chunking else 0

    def __call__(self, texts: list[str]) -> list[object]:
        lengths = self.preparer.full_lengths(texts, self.options)
        if self.chunker is not None:
            return [self._chunked(t, int(n)) for t, n in zip(texts, lengths, strict=True)]
        return [self._whole(t, int(n)) for t, n in zip(texts, lengths, strict=True)]

    def _whole(self, text: str, length: int) -> TextFacts:
        over = length > self.max_seq_length
        if over and not self.options.truncate:
            return TextFacts(length, 0, 0, ())
        return TextFacts(
            length, min(length, self.max_seq_length), 1, (text_hash(self.prompt, text),)
        )

    def _chunked(self, text: str, length: int) -> TextFacts:
        assert self.chunker is not None
        windows = self.chunker.windows(text)
        if isinstance(windows, str):  # no tokens at all: a reject
            return TextFacts(length, 0, 0, ())
        tokens = int(np.asarray(windows.n_tokens, np.int64).sum()) + self.frame * len(windows)
        hashes = tuple(text_hash(self.prompt, chunk) for chunk in windows.texts(text))
        return TextFacts(length, tokens, len(windows), hashes)
