"""Prepare: text -> token ids, with the prompt, truncation and reject rules the README states.

Texts are tokenized without special tokens and cut here rather than by the tokenizer, because the
tokenizer's own left truncation would cut the prompt away; the special tokens the model expects
around a single text (`[CLS] ... [SEP]` for BERT) are learned once from the tokenizer itself, so
any single-sequence template works. A text that cannot be embedded becomes a reject with its
reason; it never stops the other texts of the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from workers.chunking import TokenSpans
from workers.long_texts import chunks, window
from workers.model_dir import ModelCard, ModelDirError
from workers.options import EmbedOptions, OptionError, prompt_for

# A text longer than this many characters per max_seq_length token is tokenized only in the
# window truncation keeps (or counted chunk by chunk): see long_texts.py.
LONG_CHARS_PER_TOKEN = 64
# The window starts at this many characters per token kept, and grows 4x until it holds more
# tokens than are kept, plus a margin so the word at its far edge is never among them.
WINDOW_CHARS_PER_TOKEN = 16
WINDOW_MARGIN = 16
COUNT_CHUNK_CHARS = 1 << 16
SPAN_PIECES = 4  # pieces of COUNT_CHUNK_CHARS tokenized at once for chunking: ~50 MB of tokens


@dataclass(frozen=True)
class Prepared:
    """Per text: its ids (with special tokens), how many tokens, truncated or not, or why not."""

    ids: list[np.ndarray]
    n_tokens: np.ndarray
    truncated: np.ndarray
    errors: list[str | None]


@dataclass(frozen=True)
class Token:
    """One token the model reads: its id and string, whether it is a special token, and its
    characters in the client's text (None for special tokens and the prompt's)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


def reject_reason(text: object) -> str | None:
    """Why a text cannot be embedded at all, before tokenizing; None when it can."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is not a string but {type(text).__name__}"
    if not text:
        return "text is empty"
    if text.isspace():
        return "text is only whitespace"
    return None


class TextPreparer:
    def __init__(self, tokenizer: Tokenizer, card: ModelCard) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self._card = card
        self._prefix, self._suffix = special_frame(tokenizer)
        self.pad_id = pad_id(tokenizer)
        self._budget = card.max_seq_length - len(self._prefix) - len(self._suffix)
        self._long_chars = card.max_seq_length * LONG_CHARS_PER_TOKEN
        if self._budget < 1:
            raise ModelDirError(
                f"max_seq_length {card.max_seq_length} leaves no room for text "
                f"beside {len(self._prefix) + len(self._suffix)} special tokens"
            )

    @classmethod
    def from_file(cls, tokenizer_path: str | Path, card: ModelCard) -> TextPreparer:
        return cls(Tokenizer.from_file(str(tokenizer_path)), card)

    def prompt_for(self, options: EmbedOptions, model: str | None = None) -> str:
        """The prompt text for these options; the card's default prompt when none is named.
        `model` names the model in the error for an unknown prompt (default: its source)."""
        return prompt_for(self._card, options, model)

    def prepare(self, texts: Sequence[object], options: EmbedOptions) -> Prepared:
        prompt = self.prompt_for(options)
        n = len(texts)
        errors: list[str | None] = [reject_reason(t) for t in texts]
        ids: list[np.ndarray] = [np.empty(0, np.int64)] * n
        n_tokens = np.zeros(n, np.int32)
        truncated = np.zeros(n, bool)
        live = [i for i in range(n) if errors[i] is None]
        short = [i for i in live if len(str(texts[i])) <= self._long_chars]
        found = self._tok.encode_batch(
            [prompt + str(texts[i]) for i in short], add_special_tokens=False
        )
        encodings = dict(zip(short, found, strict=True))
        for i in live:
            enc = (
                encodings[i]
                if i in encodings
                else self._encode_long(prompt, str(texts[i]), options)
            )
            if isinstance(enc, int):  # the token count of a text rejected as too long
                n_tokens[i], errors[i] = enc, self._too_long(enc)
                continue
            n_prompt = _prompt_tokens(enc, len(prompt)) if prompt else 0
            kept, count, cut, error = self._fit(enc, n_prompt, options)
            ids[i], n_tokens[i], truncated[i], errors[i] = kept, count, cut, error
        return Prepared(ids, n_tokens, truncated, errors)

    def _fit(
        self, enc: Encoding, n_prompt: int, options: EmbedOptions
    ) -> tuple[np.ndarray, int, bool, str | None]:
        """Keeps what fits the budget; returns ids, token count, truncated, reject reason."""
        content = np.asarray(enc.ids, dtype=np.int64)
        total = len(content) + len(self._prefix) + len(self._suffix)
        if len(content) == 0:
            return content, total, False, "text has no tokens for this model's tokenizer"
        kept, cut, error = self._keep(content, n_prompt, options)
        if error is not None:
            return kept, total, False, error
        kept = np.concatenate([self._prefix, kept, self._suffix])
        return kept, len(kept), cut, None

    def _keep(
        self, content: np.ndarray, n_prompt: int, options: EmbedOptions
    ) -> tuple[np.ndarray, bool, str | None]:
        """The part of a text's tokens (ids, or their positions) that truncation keeps, whether
        it cut, or why the text cannot be embedded; one rule for embedding and /tokenize."""
        cut = len(content) > self._budget
        if cut and not options.truncate:
            total = len(content) + len(self._prefix) + len(self._suffix)
            return content[:0], False, self._too_long(total)
        if cut and options.truncation_direction == "left":
            if n_prompt >= self._budget:
                reason = (
                    f"the prompt alone takes {n_prompt} tokens, leaving no room for the text "
                    f"under max_seq_length {self._card.max_seq_length}"
                )
                return content[:0], False, reason
            tail = content[len(content) - (self._budget - n_prompt) :]
            return np.concatenate([content[:n_prompt], tail]), True, None
        return content[: self._budget], cut, None

    def tokenize(
        self, text: str, options: EmbedOptions, special: bool = True, model: str | None = None
    ) -> list[Token]:
        """The tokens the model reads for one text under these options (prompt, truncation,
        and with `special` the model's special tokens), with character offsets into `text`;
        a text that cannot be embedded raises OptionError with the reason."""
        prompt = self.prompt_for(options, model)
        if reason := reject_reason(text):
            raise OptionError(reason)
        enc = self._tok.encode(prompt + text, add_special_tokens=False)
        n_prompt = _prompt_tokens(enc, len(prompt)) if prompt else 0
        kept, _, error = self._keep(np.arange(len(enc.ids)), n_prompt, options)
        if error is not None or len(enc.ids) == 0:
            raise OptionError(error or "text has no tokens for this model's tokenizer")
        shift = len(prompt)
        body = [
            Token(
                enc.ids[p],
                enc.tokens[p],
                False,
                *((None, None) if p < n_prompt else (s - shift, e - shift)),
            )
            for p in kept.tolist()
            for s, e in [enc.offsets[p]]
        ]
        if not special:
            return body
        return self._specials(self._prefix) + body + self._specials(self._suffix)

    @property
    def specials(self) -> int:
        """The special tokens around every text ([CLS] and [SEP] for BERT)."""
        return len(self._prefix) + len(self._suffix)

    def prompt_tokens(self, options: EmbedOptions) -> int:
        """The tokens of the prompt these options put before each text."""
        prompt = self.prompt_for(options)
        return len(self._tok.encode(prompt, add_special_tokens=False).ids) if prompt else 0

    def token_spans(self, text: str) -> TokenSpans:
        """The text's tokens (no prompt, no special tokens) as character offsets and word
        starts, tokenized a few pieces at a time (cut at whitespace, long_texts.py) so memory
        stays bounded by the pieces, not the text."""
        pieces = list(chunks(text, COUNT_CHUNK_CHARS))
        offsets, words, at = [np.zeros((0, 2), np.int64)], [np.zeros(0, bool)], 0
        for first in range(0, len(pieces), SPAN_PIECES):
            batch = pieces[first : first + SPAN_PIECES]
            found = self._tok.encode_batch(batch, add_special_tokens=False)
            for piece, enc in zip(batch, found, strict=True):
                offsets.append(np.asarray(enc.offsets, np.int64).reshape(-1, 2) + at)
                words.append(_word_starts(enc))
                at += len(piece)
        spans = np.concatenate(offsets)
        return TokenSpans(spans[:, 0], spans[:, 1], np.concatenate(words))

    def full_lengths(self, texts: Sequence[str], options: EmbedOptions) -> np.ndarray:
        """Each text's tokens before any truncation: the prompt's, its own and the special
        tokens (what `embedpipe plan` compares with max_seq_length); long texts are counted a
        piece at a time, so memory stays bounded."""
        prompt = self.prompt_for(options)
        lengths = np.zeros(len(texts), np.int64)
        short = [i for i, t in enumerate(texts) if len(t) <= self._long_chars]
        found = self._tok.encode_batch_fast(
            [prompt + texts[i] for i in short], add_special_tokens=False
        )
        lengths[short] = [len(enc.ids) for enc in found]
        for i in sorted(set(range(len(texts))) - set(short)):
            lengths[i] = self._count(prompt + texts[i])
        return lengths + self.specials

    def _specials(self, ids: np.ndarray) -> list[Token]:
        return [Token(int(i), self._tok.id_to_token(int(i)) or "", True, None, None) for i in ids]

    def _too_long(self, total: int) -> str:
        return (
            f"text has {total} tokens, over max_seq_length {self._card.max_seq_length}; "
            "set truncate to true or shorten the text"
        )

    def _encode_long(self, prompt: str, text: str, options: EmbedOptions) -> Encoding | int:
        """The encoding of the part of a long text that truncation keeps; under truncate=false
        the full token count (with special tokens) when it is over the limit."""
        if not options.truncate:
            total = self._count(prompt + text) + len(self._prefix) + len(self._suffix)
            if total > self._card.max_seq_length:
                return total
        else:
            chars = self._budget * WINDOW_CHARS_PER_TOKEN
            while chars < len(text) and (part := window(text, chars, options.truncation_direction)):
                enc = self._tok.encode(prompt + part, add_special_tokens=False)
                if len(enc.ids) > self._budget + WINDOW_MARGIN:
                    return enc
                chars *= 4
        return self._tok.encode(prompt + text, add_special_tokens=False)

    def _count(self, text: str) -> int:
        """Tokens in a text, counted a few chunks at a time so memory stays bounded."""
        pieces, total = list(chunks(text, COUNT_CHUNK_CHARS)), 0
        for start in range(0, len(pieces), 16):
            batch = self._tok.encode_batch_fast(
                pieces[start : start + 16], add_special_tokens=False
            )
            total += sum(len(enc.ids) for enc in batch)
        return total


def _word_starts(enc: Encoding) -> np.ndarray:
    """Per token, whether it starts a word as the tokenizer's pre-tokenizer split them (at
    whitespace and punctuation for BERT); a piece's first token always does."""
    words = np.array([-1 if w is None else w for w in enc.word_ids], np.int64)
    return np.r_[True, words[1:] != words[:-1]][: len(words)]


def _prompt_tokens(enc: Encoding, prompt_chars: int) -> int:
    """Tokens that start inside the prompt: they are kept under left truncation."""
    return sum(1 for start, _ in enc.offsets if start < prompt_chars)


def pad_id(tok: Tokenizer) -> int:
    # Padded positions are masked out of attention and pooling, so any id works; the
    # tokenizer's own pad id just keeps the batches readable when debugging.
    for token in ("[PAD]", "<pad>"):
        if (token_id := tok.token_to_id(token)) is not None:
            return token_id
    return 0


def special_frame(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The special ids the tokenizer puts before and after a single text."""
    probe = "hello world"
    bare = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            prefix, suffix = full[:start], full[start + len(bare) :]
            return np.asarray(prefix, np.int64), np.asarray(suffix, np.int64)
    raise ModelDirError(
        "the tokenizer's post-processor changes the text's own tokens; "
        "embedpipe needs special tokens placed around the text"
    )
