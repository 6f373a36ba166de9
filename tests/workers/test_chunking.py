"""Chunking long texts: windows that fit, cut at good boundaries, whose offsets name exactly the
text each chunk embeds; their pooling; and a 10 MB document in bounded memory."""

import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from workers import Embedder, EmbedOptions, OptionError
from workers.chunker import Chunker, PooledEmbedder, chunk_options
from workers.chunking import Chunking, pooled
from workers.model_dir import TOKENIZER_FILE, read_card
from workers.prepare import TextPreparer

# Multi-byte characters (accents, CJK, an emoji outside the BMP) among sentences and paragraphs.
PARAGRAPH = (
    "Zürich's café served naïve résumés to 東京の研究者 🚀 every morning. "
    "The quick brown fox jumps over the lazy dog! Does it? "
    "Supercalifragilisticexpialidocious words and ordinary ones mix here.\n\n"
)
TEXT = PARAGRAPH * 12


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    tok = Tokenizer.from_file(str(minilm_dir / TOKENIZER_FILE))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def preparer(minilm_dir):
    return TextPreparer.from_file(minilm_dir / TOKENIZER_FILE, read_card(minilm_dir))


def ids_of(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("overlap", [0, 8])
def test_offsets_name_the_exact_text_of_each_chunk(preparer, tokenizer, overlap):
    """text[char_start:char_end] tokenizes to the window's own tokens, those of the whole text
    inside those characters; the chunks cover every token, in order, each within the window,
    neighbours sharing at most `overlap` of them."""
    chunker = Chunker(preparer, 256, Chunking(48, overlap), EmbedOptions())
    found = chunker.windows(TEXT)
    whole = tokenizer.encode(TEXT, add_special_tokens=False)
    assert len(found) > 10 and found.char_starts[0] == 0 and found.char_stops[-1] == len(TEXT)
    covered: list[int] = []
    for k, piece in enumerate(found.texts(TEXT)):
        start, stop = int(found.char_starts[k]), int(found.char_stops[k])
        inside = [i for i, (a, b) in enumerate(whole.offsets) if a >= start and b <= stop]
        assert ids_of(tokenizer, piece) == [whole.ids[i] for i in inside], k
        assert len(inside) == found.n_tokens[k] <= 48 - 2
        shared = len(set(covered) & set(inside))
        assert shared <= overlap and inside[0] == (covered[-1] + 1 - shared if covered else 0)
        covered += inside[shared:]
    assert covered == list(range(len(whole.ids)))


def test_windows_end_at_sentence_ends_where_one_is_near(preparer):
    chunker = Chunker(preparer, 256, Chunking(64), EmbedOptions())
    found = chunker.windows(TEXT)
    inner = found.texts(TEXT)[:-1]
    assert all(piece.rstrip()[-1] in ".!?" for piece in inner), inner


def test_a_text_that_fits_is_one_chunk_of_the_whole_text(preparer):
    found = Chunker(preparer, 256, Chunking(256), EmbedOptions()).windows("  a short text  ")
    assert (len(found), found.char_starts[0], found.char_stops[0]) == (1, 0, 16)


def test_a_word_longer_than_the_window_is_cut_inside_it(preparer, tokenizer):
    # one word of many word pieces (BERT reads a word over 100 characters as [UNK])
    text = ("zqxjkvw" * 15)[:99]
    found = Chunker(preparer, 256, Chunking(34), EmbedOptions()).windows(text)
    assert len(found) > 1 and "".join(found.texts(text)) == text
    assert list(found.n_tokens[:-1]) == [32] * (len(found) - 1)


def test_texts_that_cannot_be_chunked_say_why(preparer):
    chunker = Chunker(preparer, 256, Chunking(64), EmbedOptions())
    assert chunker.windows(None) == "text is null"
    assert chunker.windows("   ") == "text is only whitespace"


def test_the_prompt_and_special_tokens_count_against_the_window(prompt_dir):
    preparer = TextPreparer.from_file(prompt_dir / TOKENIZER_FILE, read_card(prompt_dir))
    options = EmbedOptions(prompt_name="query")  # "query: ": 2 tokens, with [CLS] and [SEP]
    assert Chunker(preparer, 256, Chunking(64), options).budget == 64 - 4
    with pytest.raises(OptionError, match="leaves 0 token"):
        Chunker(preparer, 256, Chunking(4), options)
    with pytest.raises(OptionError, match="over the model's max_seq_length 256"):
        Chunker(preparer, 256, Chunking(512), options)


def test_pooling_weights_chunks_by_their_tokens():
    vectors = np.array([[1, 0], [0, 1], [3, 3]], np.float32)
    got = pooled(vectors, np.array([3.0, 1.0, 5.0]), np.array([0, 0, 1]), 2)
    assert np.allclose(got, [[0.75, 0.25], [3, 3]])


def test_a_pooled_vector_is_the_normalized_token_weighted_mean_of_its_chunks(minilm_dir):
    embedder = Embedder.load(minilm_dir, threads=2)
    chunking = Chunking(40)
    chunker = Chunker(embedder.preparer, 256, chunking, EmbedOptions())
    pieces = chunker.windows(TEXT).texts(TEXT)
    chunks = embedder.embed(pieces, chunk_options(EmbedOptions()))
    mean = (chunks.vectors * chunks.n_tokens[:, None]).sum(0) / chunks.n_tokens.sum()
    got = PooledEmbedder(embedder, chunking).embed([TEXT, "short", ""])
    assert np.allclose(got.vectors[0], mean / np.linalg.norm(mean), atol=1e-6)
    assert got.n_tokens[0] == chunks.n_tokens.sum() and not got.truncated[0]
    assert np.allclose(got.vectors[1], embedder.embed(["short"]).vectors[0], atol=1e-6)
    assert got.errors[2] == "text is empty" and np.isnan(got.vectors[2]).all()


MEMORY_PROBE = """
import sys
from workers.chunker import Chunker
from workers.chunking import Chunking
from workers.model_dir import TOKENIZER_FILE, read_card
from workers.options import EmbedOptions
from workers.prepare import TextPreparer
from pathlib import Path

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

root = Path(sys.argv[1])
preparer = TextPreparer.from_file(root / TOKENIZER_FILE, read_card(root))
text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 175_439  # 10 MB
before = peak_mb()
found = Chunker(preparer, 256, Chunking(256, 32), EmbedOptions()).windows(text)
print(len(text), len(found), peak_mb() - before)
"""


def test_a_10_mb_document_chunks_in_bounded_memory(minilm_dir):
    """Tokenized whole, such a text takes ~1.8 GB (workers/long_texts.py); a piece at a time,
    its chunking holds the offsets of its tokens (16 bytes each) and little more."""
    probe = [sys.executable, "-c", MEMORY_PROBE, str(minilm_dir)]
    chars, chunks, grew_mb = subprocess.run(
        probe, check=True, capture_output=True, text=True
    ).stdout.split()
    assert int(chars) >= 10_000_000 and int(chunks) > 5000
    assert float(grew_mb) < 400, f"chunking a 10 MB text grew the process by {grew_mb} MB"
