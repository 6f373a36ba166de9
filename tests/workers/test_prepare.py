"""Tokenizing, truncation, prompts and rejects, on the exported model's own tokenizer."""

import dataclasses

import pytest
from tokenizers import Tokenizer

from workers import EmbedOptions, OptionError
from workers.model_dir import TOKENIZER_FILE, read_card
from workers.prepare import TextPreparer

LONG = " ".join(f"word{i}" for i in range(400))  # far over 256 tokens


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_file(str(minilm_dir / TOKENIZER_FILE))


@pytest.fixture(scope="module")
def preparer(minilm_dir):
    return TextPreparer.from_file(minilm_dir / TOKENIZER_FILE, read_card(minilm_dir))


def content_ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_right_truncation_keeps_cls_first_tokens_sep(preparer, tokenizer):
    got = preparer.prepare([LONG], EmbedOptions(truncation_direction="right"))
    ids = got.ids[0].tolist()
    assert len(ids) == 256 and got.n_tokens[0] == 256 and got.truncated[0]
    assert ids[0] == tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.token_to_id("[SEP]")
    assert ids[1:-1] == content_ids(tokenizer, LONG)[:254]


def test_left_truncation_keeps_cls_last_tokens_sep(preparer, tokenizer):
    got = preparer.prepare([LONG], EmbedOptions(truncation_direction="Left"))
    ids = got.ids[0].tolist()
    assert len(ids) == 256 and got.truncated[0]
    assert ids[0] == tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.token_to_id("[SEP]")
    assert ids[1:-1] == content_ids(tokenizer, LONG)[-254:]


def test_short_text_is_untouched(preparer, tokenizer):
    got = preparer.prepare(["a short text"], EmbedOptions())
    assert got.ids[0].tolist() == tokenizer.encode("a short text").ids
    assert got.n_tokens[0] == len(got.ids[0]) and not got.truncated[0]


def test_no_truncate_rejects_with_the_token_count(preparer, tokenizer):
    got = preparer.prepare(["fits", LONG], EmbedOptions(truncate=False))
    full = len(content_ids(tokenizer, LONG)) + 2
    assert got.errors[0] is None
    assert got.errors[1] is not None and f"{full} tokens" in got.errors[1]
    assert "max_seq_length 256" in got.errors[1]
    assert got.n_tokens[1] == full


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "null"),
        (42, "not a string"),
        (b"bytes", "not a string"),
        ("", "empty"),
        (" \n\t ", "whitespace"),
    ],
)
def test_bad_texts_become_rejects_with_their_reason(preparer, text, reason):
    got = preparer.prepare(["good", text, "also good"], EmbedOptions())
    assert got.errors[0] is None and got.errors[2] is None
    assert reason in got.errors[1]


def test_left_truncation_keeps_the_prompt(prompt_dir, tokenizer):
    card = read_card(prompt_dir)
    preparer = TextPreparer.from_file(prompt_dir / TOKENIZER_FILE, card)
    got = preparer.prepare([LONG], EmbedOptions(prompt_name="query", truncation_direction="left"))
    prompt = content_ids(tokenizer, "query: ")
    ids = got.ids[0].tolist()
    assert len(ids) == 256
    assert ids[1 : 1 + len(prompt)] == prompt
    assert ids[1 + len(prompt) : -1] == content_ids(tokenizer, LONG)[-(254 - len(prompt)) :]


def test_unknown_prompt_is_refused_with_the_list(prompt_dir):
    preparer = TextPreparer.from_file(prompt_dir / TOKENIZER_FILE, read_card(prompt_dir))
    with pytest.raises(OptionError, match="passage, query"):
        preparer.prepare(["x"], EmbedOptions(prompt_name="search"))


def test_prompt_on_a_model_without_prompts_is_refused(preparer):
    with pytest.raises(OptionError, match="has no prompts"):
        preparer.prepare(["x"], EmbedOptions(prompt_name="query"))


def test_default_prompt_applies_when_none_is_named(prompt_dir, tokenizer):
    card = dataclasses.replace(read_card(prompt_dir), default_prompt_name="query")
    preparer = TextPreparer.from_file(prompt_dir / TOKENIZER_FILE, card)
    got = preparer.prepare(["hello"], EmbedOptions())
    assert got.ids[0].tolist() == tokenizer.encode("query: hello").ids
