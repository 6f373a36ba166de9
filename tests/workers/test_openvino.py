"""workers.runtime openvino / openvino-bf16: an fp32 export run by OpenVINO on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from pipelines.cli import main
from workers import Embedder
from workers.errors import DeviceError
from workers.openvino_session import OpenVinoSession


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def texts(parity_texts):
    return parity_texts[::3]  # every length of the parity set, a third of its texts


@pytest.fixture(scope="module")
def onnxruntime_vectors(minilm_dir, texts):
    return Embedder.load(minilm_dir, threads=2, parallel_batches=True).embed(texts).vectors


def test_openvino_gives_the_fp32_vectors_of_onnxruntime(minilm_dir, texts, onnxruntime_vectors):
    embedder = Embedder.load(minilm_dir, threads=2, parallel_batches=True, runtime="openvino")
    assert embedder.lanes == 2 and embedder.compute_dtype == "fp32"
    assert embedder.session.describe() == "cpu (openvino)"
    got = embedder.embed(texts).vectors
    assert cosines(got, onnxruntime_vectors).min() >= 0.99999
    assert np.abs(got - onnxruntime_vectors).max() <= 1e-5


def test_openvino_bf16_stays_within_the_bf16_floor(minilm_dir, texts, onnxruntime_vectors):
    embedder = Embedder.load(minilm_dir, threads=2, parallel_batches=True, runtime="openvino-bf16")
    assert embedder.compute_dtype == "bf16"  # its canary passed at bf16's floor to load at all
    got = embedder.embed(texts).vectors
    assert not np.isnan(got).any()
    assert cosines(got, onnxruntime_vectors).min() >= 0.999


def test_two_calls_at_once_on_openvino_lanes_give_each_its_own_vectors(minilm_dir, texts):
    embedder = Embedder.load(minilm_dir, threads=2, parallel_batches=True, runtime="openvino")
    halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
    alone = [embedder.embed(half).vectors for half in halves]
    together: list[np.ndarray] = [np.empty(0), np.empty(0)]

    def embed(i: int) -> None:
        together[i] = embedder.embed(halves[i]).vectors

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # a shared inference request would mix the two calls' batches
    for got, want in zip(together, alone, strict=True):
        assert np.abs(got - want).max() <= 1e-6


# In a fresh process (OpenVINO's bindings initialise their statics once per process), 16 lanes
# start their first batch at once with the GIL handed over every microsecond. Without the
# session's own first batch in its constructor this deadlocked 27 times in 30 here.
FIRST_BATCHES_AT_ONCE = """
import sys, threading
import numpy as np
from workers.openvino_session import OpenVinoSession
sys.setswitchinterval(1e-6)
session = OpenVinoSession(sys.argv[1], "openvino", threads=16, lanes=16)
start = threading.Barrier(16)
def first_batch():
    start.wait()
    session.run(np.full((2, 8), 101, dtype=np.int64), np.ones((2, 8), dtype=np.int64))
lanes = [threading.Thread(target=first_batch) for _ in range(16)]
for lane in lanes:
    lane.start()
for lane in lanes:
    lane.join()
print("all lanes ran")
"""


def test_lanes_starting_their_first_batch_at_once_do_not_deadlock(minilm_dir):
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", FIRST_BATCHES_AT_ONCE, str(minilm_dir / "model.onnx")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "all lanes ran"


def test_openvino_refuses_other_exports_and_devices_before_loading(minilm_int8_dir, minilm_dir):
    with pytest.raises(DeviceError, match=r"int8 export; workers.runtime openvino runs fp32"):
        Embedder.load(minilm_int8_dir, runtime="openvino")
    with pytest.raises(DeviceError, match="runs on the CPU only"):
        Embedder.load(minilm_dir, device="cuda", runtime="openvino-bf16")
    with pytest.raises(ValueError, match="runtime must be one of openvino, openvino-bf16"):
        OpenVinoSession(minilm_dir / "model.onnx", "openvino-fp8", threads=1)


def test_embed_takes_the_runtime_as_a_flag(minilm_dir, capsys):
    assert main(["embed", str(minilm_dir), "a first text", "--runtime", "openvino-bf16"]) == 0
    bf16 = np.array(json.loads(capsys.readouterr().out))
    assert main(["embed", str(minilm_dir), "a first text"]) == 0
    fp32 = np.array(json.loads(capsys.readouterr().out))
    assert bf16.shape == fp32.shape == (1, 384)
    assert cosines(bf16, fp32).min() >= 0.999


def test_ray_datas_embed_batches_takes_the_runtime(minilm_dir, texts, onnxruntime_vectors):
    import pyarrow as pa

    from workers.ray_data import EmbedBatches

    embed = EmbedBatches(minilm_dir, threads=2, runtime="openvino")
    assert embed.embedder.session.runtime == "openvino"
    out = embed(pa.table({"text": texts[:20]}))
    got = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
    assert np.abs(got - onnxruntime_vectors[:20]).max() <= 1e-5
