"""Out of device memory: a batch that does not fit is split and run again, the budget comes down
for the rest of the run, and a text that does not fit even alone is a reject with its reason.

The device is a stand-in for onnxruntime's session that raises what onnxruntime raises when its
CUDA arena cannot allocate, for any batch over a given number of tokens."""

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from export.parity import cosines
from workers import Embedder


class Binding:
    def __init__(self) -> None:
        self.inputs: dict[str, np.ndarray] = {}

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = array

    def bind_output(self, *args: object) -> None:
        pass

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [self.output]


class MemoryLimitedSession:
    """onnxruntime's InferenceSession as the embedder drives it, on a device that holds at most
    `limit` tokens a batch; counts the batches it refused."""

    def __init__(self, real, limit: int) -> None:
        self.real, self.limit, self.refused = real, limit, 0

    def io_binding(self) -> Binding:
        return Binding()

    def run_with_iobinding(self, binding: Binding) -> None:
        ids = binding.inputs["input_ids"]
        if ids.size > self.limit:
            self.refused += 1
            raise RuntimeException(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                "while running MatMul node. Status Message: bfc_arena.cc:376 "
                "BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer "
                f"of size {ids.size * 4096}"
            )
        binding.output = self.real.run(None, binding.inputs)[0]

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def limited(model_dir, limit: int, budget: int) -> tuple[Embedder, MemoryLimitedSession]:
    embedder = Embedder.load(model_dir, max_batch_tokens=budget)
    fake = MemoryLimitedSession(embedder.session._session, limit)
    embedder.session._session = fake
    return embedder, fake


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
