"""Out of device memory: a batch that does not fit is split and run again, the budget comes down
for the rest of the run, and a text that does not fit even alone is a reject with its reason.

The device is a stand-in for onnxruntime's session (tests/workers/helpers.py) that raises what
onnxruntime raises when its CUDA arena cannot allocate, for any batch over a given number of
tokens."""

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from export.parity import cosines
from tests.workers.helpers import MemoryLimitedSession, limited
from workers import Embedder


def test_a_batch_over_the_devices_memory_is_split_and_every_text_still_embedded(
    minilm_dir, parity_texts
):
    texts = parity_texts[:200]
    expected = Embedder.load(minilm_dir, max_batch_tokens=8192).embed(texts).vectors
    embedder, device = limited(minilm_dir, limit=1500, budget=8192)
    got = embedder.embed(texts)
    assert got.ok.all() and device.refused > 0 and got.oom_splits >= device.refused
    assert cosines(got.vectors, expected).min() > 0.99999
    assert embedder.max_batch_tokens <= 1500  # remembered: the next call starts under the limit
    before = device.refused
    embedder.embed(texts)
    assert device.refused == before


def test_a_text_that_does_not_fit_even_alone_is_a_reject_with_its_reason(minilm_dir):
    embedder, _ = limited(minilm_dir, limit=2 * 100, budget=4096)
    long_text, short = "word " * 200, "a short text"
    got = embedder.embed([short, long_text, short])
    assert got.ok.tolist() == [True, False, True]
    assert "does not fit the device's memory even alone" in got.errors[1]
    assert np.isnan(got.vectors[1]).all() and not np.isnan(got.vectors[0]).any()


def test_other_device_errors_are_not_taken_for_out_of_memory(minilm_dir):
    embedder = Embedder.load(minilm_dir)

    class Broken(MemoryLimitedSession):
        def run_with_iobinding(self, binding):
            raise RuntimeException("[ONNXRuntimeError] : 1 : FAIL : CUDA error: illegal address")

    embedder.session._session = Broken(embedder.session._session, 10**9)
    with pytest.raises(RuntimeException, match="illegal address"):
        embedder.embed(["a text"])
