"""The embedder against sentence-transformers on the real all-MiniLM-L6-v2."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from export.parity import cosines, reference_embed
from workers import Embedder, EmbedOptions
from workers.embedder import cpu_lanes
from workers.model_dir import MODEL_FILE
from workers.session import DeviceError, OnnxSession


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return Embedder.load(minilm_dir, threads=2)


def test_fp32_parity_on_500_texts_of_every_length(embedder, st_model, parity_texts):
    assert len(parity_texts) >= 500
    got = embedder.embed(parity_texts)
    assert got.ok.all()
    assert got.truncated.sum() >= 50  # the long texts were really cut
    ref = reference_embed(st_model, parity_texts, EmbedOptions())
    assert cosines(got.vectors, ref).min() >= 0.9999


def test_left_truncation_equals_sentence_transformers_left(embedder, st_model, parity_texts):
    long_texts = [t for t in parity_texts if len(t.split()) > 300][:20]
    options = EmbedOptions(truncation_direction="left")
    got = embedder.embed(long_texts, options)
    assert got.truncated.all() and (got.n_tokens == 256).all()
    ref = reference_embed(st_model, long_texts, options)
    assert cosines(got.vectors, ref).min() >= 0.9999
    right = embedder.embed(long_texts, EmbedOptions(truncation_direction="right"))
    assert cosines(got.vectors, right.vectors).max() < 0.99  # the other end of the text


def test_normalize_false_equals_the_raw_reference(embedder, st_model, parity_texts):
    texts = parity_texts[::10]
    options = EmbedOptions(normalize=False)
    got = embedder.embed(texts, options).vectors
    ref = reference_embed(st_model, texts, options)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-4)
    assert cosines(got, ref).min() >= 0.9999


def test_normalized_vectors_have_unit_length(embedder, parity_texts):
    got = embedder.embed(parity_texts[:50]).vectors
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("budget", [1, 300, 4096, 10**7])
def test_same_vectors_for_any_batch_budget(minilm_dir, embedder, parity_texts, budget):
    texts = parity_texts[::5]
    base = embedder.embed(texts).vectors
    other = Embedder.load(minilm_dir, threads=2, max_batch_tokens=budget)
    np.testing.assert_allclose(other.embed(texts).vectors, base, atol=1e-5)


def test_same_vectors_for_shuffled_input(embedder, parity_texts):
    texts = parity_texts[::5]
    order = np.random.default_rng(7).permutation(len(texts))
    base = embedder.embed(texts).vectors
    shuffled = embedder.embed([texts[i] for i in order]).vectors
    np.testing.assert_allclose(shuffled, base[order], atol=1e-5)


def test_rejects_do_not_touch_the_other_texts(embedder):
    texts = ["first text", None, "second text", "", 3.5, "   "]
    got = embedder.embed(texts)
    assert got.ok.tolist() == [True, False, True, False, False, False]
    assert [e is None for e in got.errors] == got.ok.tolist()
    assert np.isnan(got.vectors[~got.ok]).all()
    alone = embedder.embed(["first text", "second text"]).vectors
    np.testing.assert_allclose(got.vectors[got.ok], alone, atol=1e-6)


def test_token_counts_and_truncation_flags(embedder):
    got = embedder.embed(["hello world", "word " * 1000])
    assert got.n_tokens.tolist() == [4, 256]
    assert got.truncated.tolist() == [False, True]


def test_threads_are_settable(minilm_dir):
    one = Embedder.load(minilm_dir, threads=1)
    assert one.embed(["a text"]).ok.all()
    with pytest.raises(ValueError, match="threads"):
        Embedder.load(minilm_dir, threads=0)


def test_cuda_where_onnxruntime_cannot_use_it_is_an_error(minilm_dir):
    from tests.conftest import has_gpu

    if has_gpu():
        pytest.skip("this machine has a GPU: CUDA works here")
    with pytest.raises(DeviceError, match="CUDA"):
        OnnxSession(minilm_dir / MODEL_FILE, device="cuda")


def test_unknown_device_names_the_choices(minilm_dir):
    with pytest.raises(DeviceError, match="cpu, cuda"):
        OnnxSession(minilm_dir / MODEL_FILE, device="tpu")


def test_an_empty_call_gives_an_empty_result(embedder):
    got = embedder.embed([])
    assert got.vectors.shape == (0, 384) and got.errors == ()


def test_concurrent_calls_from_two_threads_give_the_same_vectors(embedder, parity_texts):
    from concurrent.futures import ThreadPoolExecutor

    texts = parity_texts[::3]  # 186 of every length: two calls long enough to overlap
    halves = [texts[::2], texts[1::2]]
    alone = [embedder.embed(h).vectors for h in halves]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda h: embedder.embed(h).vectors, halves))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_iobinding_path_equals_a_plain_onnxruntime_session(minilm_dir, embedder, parity_texts):
    import onnxruntime as ort

    from workers.batching import pad_batch

    plain = ort.InferenceSession(str(minilm_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    prepared = embedder.preparer.prepare(parity_texts[:48], EmbedOptions())
    ids, mask = pad_batch(prepared.ids, embedder.preparer.pad_id)
    (unbound,) = plain.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(embedder.session.run(ids, mask), unbound, rtol=0, atol=1e-6)


def test_a_profiled_session_gives_the_same_vectors_and_a_trace_of_its_nodes(
    minilm_dir, embedder, tmp_path
):
    import json

    ids, mask = np.full((2, 8), 101, dtype=np.int64), np.ones((2, 8), dtype=np.int64)
    profiled = OnnxSession(minilm_dir / MODEL_FILE, threads=1, profile_prefix=tmp_path / "run")
    np.testing.assert_allclose(profiled.run(ids, mask), embedder.session.run(ids, mask), atol=1e-6)
    trace = profiled.end_profiling()
    assert trace.parent == tmp_path and trace.name.startswith("run")
    events = json.loads(trace.read_text())
    assert sum(e["name"] == "model_run" for e in events) == 1
    ops = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "args" in e}
    assert "MatMul" in ops and "Attention" in ops


def test_warm_up_runs_every_length_bucket_within_the_budget_and_changes_nothing(
    minilm_dir, parity_texts
):
    warm = Embedder.load(minilm_dir, threads=2, max_batch_tokens=2048)
    before = warm.embed(parity_texts[:40]).vectors
    shapes = warm.warm_up()
    assert [length for _, length in shapes] == [16, 32, 64, 128, 256]  # max_seq_length 256
    assert all(rows * length <= 2048 for rows, length in shapes)
    np.testing.assert_array_equal(warm.embed(parity_texts[:40]).vectors, before)


def test_parallel_batches_give_the_same_vectors_to_the_last_bit(minilm_dir, embedder, parity_texts):
    # What the run's CPU actors use: two single-threaded batches at once instead of one batch
    # on two threads; a re-index compares its vectors with a plain embedder's byte for byte.
    texts = parity_texts[::3]
    lanes = Embedder.load(minilm_dir, threads=2, parallel_batches=True)
    assert lanes.lanes == 2 and cpu_lanes("cpu", 1) == cpu_lanes("cpu", None) == 1
    assert lanes.embed(texts).vectors.tobytes() == embedder.embed(texts).vectors.tobytes()
    halves = [texts[::2], texts[1::2]]
    with ThreadPoolExecutor(2) as pool:  # two tasks of an actor, sharing its lanes
        together = list(pool.map(lambda h: lanes.embed(h).vectors, halves))
    assert [t.tobytes() for t in together] == [embedder.embed(h).vectors.tobytes() for h in halves]


def test_a_calls_device_time_never_exceeds_its_wall_time_with_lanes(minilm_dir, parity_texts):
    # Two lanes busy for a second are one second of the device, not two: the run's idle share
    # of the device is computed from these.
    lanes = Embedder.load(minilm_dir, threads=2, parallel_batches=True, max_batch_tokens=512)
    clock = time.perf_counter()
    got = lanes.embed(parity_texts[:200])
    assert 0 < got.device_s <= time.perf_counter() - clock


def test_each_call_reports_its_time_on_the_device(embedder, parity_texts):
    assert embedder.embed(parity_texts[:40]).device_s > 0
    assert embedder.embed([None, ""]).device_s == 0  # nothing to run


def test_a_texts_vector_does_not_depend_on_its_batch_mates_to_the_last_bit(
    minilm_dir, parity_texts
):
    # What lets a re-index copy last week's vectors and still equal a full recompute.
    texts = parity_texts[:200]
    whole = Embedder.load(minilm_dir, threads=2, max_batch_tokens=4096).embed(texts).vectors
    other = Embedder.load(minilm_dir, threads=1, max_batch_tokens=700)
    picked = np.random.default_rng(7).choice(len(texts), 30, replace=False)
    subset = other.embed([texts[i] for i in picked]).vectors
    alone = [other.embed([texts[i]]).vectors[0] for i in picked[:10]]
    assert subset.tobytes() == whole[picked].tobytes()
    assert np.stack(alone).tobytes() == whole[picked[:10]].tobytes()
