"""A model shipped to a node that lacks it: unpacked once per node into a cache named by its
hash, identical to the driver's files, and replaced when the cached copy is damaged."""

from __future__ import annotations

import filecmp

import pytest

from workers.model_dir import MODEL_FILE, read_card
from workers.model_shipment import CACHE_ENV, ModelShipment, model_dir_here, pack


@pytest.fixture
def shipped(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sha = read_card(minilm_dir).onnx_sha256
    return ModelShipment(str(minilm_dir), sha, node_id="driver-node", files="a ref")


class Fetch:
    def __init__(self, model_dir) -> None:
        self.model_dir, self.calls = model_dir, 0

    def __call__(self):
        self.calls += 1
        return pack(self.model_dir)


def test_the_drivers_node_and_a_single_machine_load_the_drivers_directory(shipped, minilm_dir):
    fetch = Fetch(minilm_dir)
    assert model_dir_here(shipped, "driver-node", fetch) == str(minilm_dir)
    alone = ModelShipment(str(minilm_dir), shipped.onnx_sha256)  # nothing was shipped
    assert model_dir_here(alone, "another-node", fetch) == str(minilm_dir)
    assert fetch.calls == 0


def test_another_node_unpacks_the_model_once_into_its_cache(shipped, minilm_dir, tmp_path):
    fetch = Fetch(minilm_dir)
    here = model_dir_here(shipped, "worker-node", fetch)
    assert here.startswith(str(tmp_path / "cache")) and here != str(minilm_dir)
    names = sorted(p.name for p in minilm_dir.iterdir())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == [
        shipped.onnx_sha256[:32]
    ]
    match, mismatch, errors = filecmp.cmpfiles(minilm_dir, here, names, shallow=False)
    assert (sorted(match), mismatch, errors) == (names, [], [])
    assert model_dir_here(shipped, "worker-node", fetch) == here and fetch.calls == 1


def test_a_damaged_cached_copy_is_replaced(shipped, minilm_dir):
    fetch = Fetch(minilm_dir)
    here = model_dir_here(shipped, "worker-node", fetch)
    with open(f"{here}/{MODEL_FILE}", "r+b") as model:  # a disk error, a half-finished copy
        model.truncate(1000)
    assert model_dir_here(shipped, "worker-node", fetch) == here and fetch.calls == 2
    assert filecmp.cmp(minilm_dir / MODEL_FILE, f"{here}/{MODEL_FILE}", shallow=False)
