"""Cutting long texts at whitespace: windows keep whole words, chunks rejoin to the text."""

import pytest

from workers.long_texts import chunks, window

UNIT = "alpha beta\tgamma\ndelta epsilon "
TEXT = UNIT * 50


def test_chunks_rejoin_to_the_text_and_start_at_a_space():
    pieces = list(chunks(TEXT, 40))
    assert "".join(pieces) == TEXT and len(pieces) > 10
    assert all(p[0] in " \t\n" for p in pieces[1:])


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("right", UNIT * 3 + "alpha"), ("left", " " + UNIT * 3)],  # 98 and 94 of the 100 chars
)
def test_a_window_keeps_whole_words_from_its_end(direction, expected):
    part = window(TEXT, 100, direction)
    assert part == expected
    assert 50 < len(part) <= 100
    if direction == "right":
        assert TEXT.startswith(part) and TEXT[len(part)] in " \t\n"
    else:
        assert TEXT.endswith(part) and part[0] in " \t\n"


def test_no_space_to_cut_at_means_no_window():
    assert window("x" * 1000, 100, "right") is None
    assert window("x" * 1000, 100, "left") is None
    assert list(chunks("x" * 1000, 100)) == ["x" * 1000]
    assert window("short text", 100, "left") == "short text"
