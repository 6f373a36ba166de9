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
    assert got.errors[1] == (
        f"text has {full} tokens, over max_seq_length 256; set truncate to true or shorten the text"
    )
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


# Over the 64 characters per max_seq_length token at which only the kept window is tokenized.
VERY_LONG = "".join(f"word{i}, more\ttext\n" for i in range(2000))


@pytest.mark.parametrize("direction", ["right", "left"])
def test_a_very_long_text_keeps_the_same_tokens_as_a_whole_tokenization(
    preparer, tokenizer, direction
):
    assert len(VERY_LONG) > 64 * 256
    got = preparer.prepare([VERY_LONG], EmbedOptions(truncation_direction=direction))
    full = content_ids(tokenizer, VERY_LONG)
    assert got.ids[0].tolist()[1:-1] == (full[:254] if direction == "right" else full[-254:])
    assert got.n_tokens[0] == 256 and got.truncated[0]


def test_a_very_long_text_under_no_truncate_is_rejected_with_its_exact_count(preparer, tokenizer):
    got = preparer.prepare([VERY_LONG], EmbedOptions(truncate=False))
    full = len(content_ids(tokenizer, VERY_LONG)) + 2
    assert got.n_tokens[0] == full and f"text has {full} tokens" in str(got.errors[0])


def test_a_very_long_text_keeps_its_prompt_under_left_truncation(prompt_dir, tokenizer):
    preparer = TextPreparer.from_file(prompt_dir / TOKENIZER_FILE, read_card(prompt_dir))
    options = EmbedOptions(prompt_name="query", truncation_direction="left")
    got = preparer.prepare([VERY_LONG], options).ids[0].tolist()
    prompt = content_ids(tokenizer, "query: ")
    assert got[1 : 1 + len(prompt)] == prompt
    assert got[1 + len(prompt) : -1] == content_ids(tokenizer, VERY_LONG)[-(254 - len(prompt)) :]


@pytest.mark.parametrize("truncate", [True, False])
def test_a_10_mb_text_is_truncated_or_rejected_with_its_token_count(preparer, tokenizer, truncate):
    unit, repeats = "lorem ipsum dolor sit amet ", 370_371
    text = unit * repeats  # 10,000,017 characters
    got = preparer.prepare([text, "short"], EmbedOptions(truncate=truncate))
    assert got.errors[1] is None
    if truncate:
        assert (got.n_tokens[0], got.truncated[0], got.errors[0]) == (256, True, None)
    else:
        full = len(content_ids(tokenizer, unit)) * repeats + 2  # words never share a token
        assert got.n_tokens[0] == full and not got.truncated[0]
        assert f"text has {full} tokens, over max_seq_length 256" in str(got.errors[0])
