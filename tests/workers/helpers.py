"""Helpers shared by the tests (workers and pipelines): a device that runs out of memory.

A stand-in for onnxruntime's session that raises what onnxruntime raises when its CUDA arena
cannot allocate, for any batch over a given number of tokens. Not a test module."""

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

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
