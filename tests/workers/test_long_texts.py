"""Cutting long texts at whitespace: windows keep whole words, chunks rejoin to the text."""

import pytest

from workers.long_texts import chunks, window

TEXT = "alpha beta\tgamma\ndelta epsilon " * 50


def test_chunks_rejoin_to_the_text_and_start_at_a_space():
    pieces = list(chunks(TEXT, 40))
    assert "".join(pieces) == TEXT and len(pieces) > 10
    assert all(p[0] in " \t\n" for p in pieces[1:])


@pytest.mark.parametrize("direction", ["right", "left"])
def test_a_window_keeps_whole_words_from_its_end(direction):
    part = window(TEXT, 100, direction)
    assert part is not None and 50 < len(part) <= 100
    if direction == "right":
        assert TEXT.startswith(part) and TEXT[len(part)] in " \t\n"
    else:
        assert TEXT.endswith(part) and part[0] in " \t\n"


def test_no_space_to_cut_at_means_no_window():
    assert window("x" * 1000, 100, "right") is None
    assert window("x" * 1000, 100, "left") is None
    assert list(chunks("x" * 1000, 100)) == ["x" * 1000]
    assert window("short text", 100, "left") == "short text"
