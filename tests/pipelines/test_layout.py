"""output.dimensions and output.precision: what the embedding column holds, from the encoding
rules to a run whose copies and cache reuse stay in that layout."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.calibration import ranges_from
from pipelines.config import ConfigError, load_config
from pipelines.output.layout import Layout, LayoutError, as_ranges
from pipelines.storage.settings import StorageSettings
from tests.pipelines.test_cache import distinct_texts, run, write_corpus  # noqa: F401
from workers import Embedder, EmbedOptions
from workers.finish import l2_normalize

RNG = np.random.default_rng(7)
VECTORS = l2_normalize(RNG.standard_normal((50, 384)).astype(np.float32))


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_precisions_are_sentence_transformers_quantize_embeddings(precision):
    from sentence_transformers.quantization import quantize_embeddings

    expected = quantize_embeddings(VECTORS, precision=precision)
    got = Layout.of(384, None, precision, True).encode(VECTORS)
    assert got.dtype == expected.dtype and got.shape == (50, 48)
    assert np.array_equal(got, expected)


def test_float16_is_a_cast_and_dimensions_keep_the_first_values_normalized():
    half = Layout.of(384, None, "float16", True).encode(VECTORS)
    assert half.dtype == np.float16 and np.array_equal(half, VECTORS.astype(np.float16))
    cut = Layout.of(384, 64, "float32", True).encode(VECTORS)
    np.testing.assert_allclose(cut, l2_normalize(VECTORS[:, :64]), rtol=0, atol=0)
    raw = Layout.of(384, 64, "float32", False).encode(VECTORS * 3)
    assert np.array_equal(raw, (VECTORS * 3)[:, :64])
    both = Layout.of(384, 128, "ubinary", True)
    assert both.encode(VECTORS).shape == (50, 16) and both.arrow_type() == pa.list_(pa.uint8(), 16)


@pytest.mark.parametrize(
    ("dimensions", "precision", "message"),
    [
        (0, "float32", "choose 1 to 384"),
        (385, "float16", "choose 1 to 384"),
        (100, "binary", "multiple of 8"),
        (None, "int4", "output.precision 'int4'"),
    ],
)
def test_a_layout_the_model_cannot_have_names_the_key(dimensions, precision, message):
    with pytest.raises(LayoutError, match=message):
        Layout.of(384, dimensions, precision, True)


def test_the_default_layout_leaves_the_fingerprint_as_it_was():
    assert Layout.of(384, None, "float32", True).fingerprint() is None
    assert Layout.of(384, 384, "float16", True).fingerprint() == {
        "dimensions": 384,
        "precision": "float16",
    }


def test_the_config_refuses_an_unknown_precision(tmp_path):
    conf = tmp_path / "job.yaml"
    conf.write_text("model: {source: x, dir: d}\ninput: {path: in}\noutput: {path: out}\n")
    with pytest.raises(ConfigError, match=r"output\.precision"):
        load_config(conf, ["output.precision=int3"])


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_binary_run_writes_packed_rows_and_copies_repeats_as_stored(
    tmp_path,
    minilm_dir,
    distinct_texts,  # noqa: F811
):
    docs = [(f"d{i:03d}", distinct_texts[(i * 7) % 20]) for i in range(80)]
    corpus = write_corpus(tmp_path / "in", docs)
    overrides = ["output.dimensions=128", "output.precision=binary", "run.wait_for_copies=true"]
    report = run(tmp_path, minilm_dir, corpus, "out", *overrides)
    assert report["rows_embedded"] == 20 and report["rows_deduplicated"] == 60
    files = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert pq.read_schema(files[0]).field("embedding").type == pa.list_(pa.int8(), 16)
    parts = pl.read_parquet(files).sort("id")
    texts = dict(docs)
    vectors = Embedder.load(minilm_dir).embed([texts[k] for k in parts["id"]]).vectors
    expected = Layout.of(384, 128, "binary", True).encode(vectors)
    assert np.array_equal(np.stack(parts["embedding"].to_numpy()), expected)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_cache_from_reuses_only_an_output_of_the_same_layout(
    tmp_path,
    minilm_dir,
    distinct_texts,  # noqa: F811
):
    corpus = write_corpus(tmp_path / "in", [(f"d{i}", distinct_texts[i]) for i in range(40)])
    half = ["output.dimensions=64", "output.precision=float16"]
    run(tmp_path, minilm_dir, corpus, "old", *half)
    again = run(
        tmp_path, minilm_dir, corpus, "again", *half, f"run.cache_from=[{tmp_path / 'old'}]"
    )
    assert again["rows_from_cache"] == 40 and again["rows_embedded"] == 0
    old = pl.read_parquet(tmp_path / "old" / "part-*.parquet").sort("id")
    new = pl.read_parquet(tmp_path / "again" / "part-*.parquet").sort("id")
    assert old["embedding"].to_list() == new["embedding"].to_list()
    wide = run(tmp_path, minilm_dir, corpus, "wide", f"run.cache_from=[{tmp_path / 'old'}]")
    assert wide["rows_from_cache"] == 0 and wide["rows_embedded"] == 40
    (reason,) = wide["cache"]["sources"][0]["skipped"].values()
    assert "vectors" in reason
    options = EmbedOptions()
    direct = Embedder.load(minilm_dir).embed([distinct_texts[0]], options).vectors
    expected = Layout.of(384, 64, "float16", True).encode(direct)
    assert np.array_equal(np.array(old.filter(pl.col("id") == "d0")["embedding"][0]), expected[0])


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_and_uint8_are_sentence_transformers_with_the_same_ranges(precision):
    from sentence_transformers.quantization import quantize_embeddings

    ranges = np.vstack([VECTORS.min(axis=0), VECTORS.max(axis=0)])
    expected = quantize_embeddings(VECTORS, precision=precision, ranges=ranges)
    layout = Layout.of(384, None, precision, True, as_ranges(ranges[0], ranges[1]))
    got = layout.encode(VECTORS)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    back = layout.dequantize(got)
    cosines = (back * VECTORS).sum(1) / np.linalg.norm(back, axis=1)
    assert cosines.min() >= 0.99
    beyond = layout.encode(np.vstack([VECTORS[:1] + 5, VECTORS[:1] - 5]))  # clipped, not wrapped
    top = 127 if precision == "int8" else 255
    assert (beyond[0] == top).all() and (beyond[1] == top - 255).all()


def test_calibration_ranges_come_from_json_npy_or_an_earlier_output(tmp_path):
    low, high = VECTORS.min(axis=0)[:64], VECTORS.max(axis=0)[:64]
    (tmp_path / "r.json").write_text(json.dumps({"min": low.tolist(), "max": high.tolist()}))
    np.save(tmp_path / "r.npy", np.vstack([low, high]))
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    recorded = {"vectors": {"ranges": {"min": low.tolist(), "max": high.tolist()}}}
    (earlier / "_embedpipe.json").write_text(json.dumps(recorded))
    storage = StorageSettings()
    for where in ("r.json", "r.npy", "earlier"):
        assert ranges_from(str(tmp_path / where), storage) == as_ranges(low, high)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no ranges"):
        ranges_from(str(tmp_path / "empty"), storage)
    with pytest.raises(LayoutError, match="ranges for 64 dimensions"):
        Layout.of(384, 128, "int8", True, as_ranges(low, high))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_an_int8_run_calibrates_once_records_the_ranges_and_resumes_with_them(
    tmp_path,
    minilm_dir,
    distinct_texts,  # noqa: F811
):
    docs = [(f"d{i:03d}", distinct_texts[i]) for i in range(60)]
    corpus = write_corpus(tmp_path / "in", docs)
    int8 = ["output.precision=int8", "output.calibration_rows=60"]  # the whole corpus: none clipped
    run(tmp_path, minilm_dir, corpus, "out", *int8)
    out = tmp_path / "out"
    recorded = json.loads((out / "_embedpipe.json").read_text())["vectors"]
    assert recorded["calibration"] == {"rows": 60} and len(recorded["ranges"]["min"]) == 384
    files = sorted(out.glob("part-*.parquet"))
    metadata = pq.read_schema(files[0]).metadata[b"embedpipe.fingerprint"]
    assert json.loads(metadata)["vectors"]["ranges"] == recorded["ranges"]
    parts = pl.read_parquet(files).sort("id")
    texts = dict(docs)
    vectors = Embedder.load(minilm_dir).embed([texts[k] for k in parts["id"]]).vectors
    ranges = as_ranges(recorded["ranges"]["min"], recorded["ranges"]["max"])
    layout = Layout.of(384, None, "int8", True, ranges)
    stored = np.stack(parts["embedding"].to_numpy())
    assert stored.dtype == np.int8 and np.array_equal(stored, layout.encode(vectors))
    back = layout.dequantize(stored)
    assert ((back * vectors).sum(1) / np.linalg.norm(back, axis=1)).min() >= 0.99
    # a resumed run quantizes with the recorded ranges: the redone file is the same bytes
    before = files[1].read_bytes()
    files[1].unlink()
    (out / "_SUCCESS").unlink()
    run(tmp_path, minilm_dir, corpus, "out", *int8)
    assert files[1].read_bytes() == before
    # a re-index calibrated from it copies its rows
    again = run(
        tmp_path,
        minilm_dir,
        corpus,
        "again",
        "output.precision=int8",
        f"output.calibration={out}",
        f"run.cache_from=[{out}]",
    )
    assert again["rows_from_cache"] == 60 and again["rows_embedded"] == 0
