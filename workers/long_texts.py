"""Long texts: cut a text at whitespace so that only the part truncation keeps is tokenized.

Tokenizing a whole 10 MB document to keep its first 512 tokens took 8 s and 1.8 GB (tokenizers
keeps offsets and strings for each of its 3 million tokens), and a task tokenizes its texts at
once. Tokenizers split words at whitespace before anything else, so the tokens of the part
before (or after) a space are those of the whole text: a window cut at an ASCII space, tab or
newline gives the same kept tokens, and counting a text chunk by chunk gives the same count.
A window or chunk that cannot be cut at whitespace is None: the caller falls back to the whole.
"""

from __future__ import annotations

from collections.abc import Iterator

SPACES = " \n\t\r"


def window(text: str, chars: int, direction: str) -> str | None:
    """About `chars` characters from the start (right truncation keeps it) or the end (left)."""
    if chars >= len(text):
        return text
    if direction == "left":
        cut = _first_space(text, len(text) - chars)
        return None if cut is None else text[cut:]  # starts with the space, as in the text
    cut = _last_space(text, chars)
    return None if cut is None else text[:cut]


def chunks(text: str, chars: int) -> Iterator[str]:
    """The text in pieces of about `chars` characters, each starting at a space but the first;
    one piece holding the rest where no space is left to cut at."""
    start = 0
    while len(text) - start > chars:
        cut = _first_space(text, start + chars)
        if cut is None:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _first_space(text: str, start: int) -> int | None:
    found = [i for i in (text.find(c, start) for c in SPACES) if i >= 0]
    return min(found) if found else None


def _last_space(text: str, stop: int) -> int | None:
    found = [i for i in (text.rfind(c, 0, stop) for c in SPACES) if i > 0]
    return max(found) if found else None
