"""The x-use-cache LRU: vectors and their token counts by (model fingerprint, options, text), in
the server's memory (the counts answer a hit's usage as a miss's would).

A hit must give the very vector a miss would: the key holds everything the vector depends on
(the model's sha256 and every option), and entries are read-only copies. Bounded by entry count;
the least recently used entry goes first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from workers import EmbedOptions

Key = tuple[str, EmbedOptions, str]


class VectorCache:
    def __init__(self, fingerprint: str, max_entries: int) -> None:
        self.fingerprint = fingerprint
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, options: EmbedOptions) -> tuple[np.ndarray, int] | None:
        """The text's vector and token count, or None."""
        key = (self.fingerprint, options, text)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, text: str, options: EmbedOptions, vector: np.ndarray, tokens: int) -> None:
        if self.max_entries < 1:
            return
        frozen = np.array(vector, dtype=np.float32, copy=True)
        frozen.flags.writeable = False
        key = (self.fingerprint, options, text)
        with self._lock:
            self._entries[key] = (frozen, tokens)
            self._entries.move_to_end(key)  # a replaced entry is recent too
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
