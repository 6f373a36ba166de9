"""A model directory carried to the nodes that lack it, through Ray's object store.

On one machine every actor loads the driver's model directory. On a cluster the worker nodes
have disks of their own, and an export (1.3 GB for gte-large in fp32) is too big for a job's
`working_dir`, so the driver puts the directory's files into the object store once and an actor
on another node writes them to a node-local cache named by the model's sha256, where its
neighbours and the next run with the same model find them. Nothing needs to be copied to the
nodes by hand, and no node can load another model than the driver checked: the cached copy is
verified against the card's sha256 before it is used, and again by the loader.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.files import sha256_file
from workers.model_dir import MODEL_FILE, read_card

# Where a node keeps the models shipped to it (default: <the system temp dir>/embedpipe-models).
CACHE_ENV = "EMBEDPIPE_MODEL_CACHE"


@dataclass(frozen=True)
class ModelShipment:
    path: str  # the model directory on the driver's node
    onnx_sha256: str  # the card's hash of model.onnx: names the cached copy
    node_id: str | None = None  # the driver's node; None: nothing shipped (one machine)
    files: Any = None  # an ObjectRef to {relative name: uint8 array} of every file


def pack(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Every file of a model directory, by its name relative to it."""
    root = Path(model_dir)
    return {
        str(path.relative_to(root)): np.fromfile(path, dtype=np.uint8)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def ship_model(model_dir: str | Path) -> ModelShipment:
    """The model directory put into Ray's object store once, by a process connected to Ray on
    the node that has it: an actor on another node unpacks it into that node's cache
    (`model_dir_here`); an actor on this node loads the directory itself."""
    import ray  # here only: the rest of this module works on plain files

    root = str(Path(model_dir).resolve())  # an actor's working directory is not the caller's
    sha256 = read_card(root).onnx_sha256
    node = ray.get_runtime_context().get_node_id()
    return ModelShipment(root, sha256, node, ray.put(pack(root)))


def model_dir_on_this_node(shipment: ModelShipment) -> str:
    """model_dir_here for the Ray worker this runs in: its node, and the shipped files from
    the object store."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return model_dir_here(shipment, node, lambda: ray.get(shipment.files))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "embedpipe-models")


def model_dir_here(shipment: ModelShipment, node_id: str, fetch: Any) -> str:
    """The model directory to load on node `node_id`: the driver's own on its node (or when
    nothing was shipped), else the node's cached copy, unpacked from `fetch()` when missing."""
    if shipment.files is None or node_id == shipment.node_id:
        return shipment.path
    target = cache_root() / shipment.onnx_sha256[:32]
    target.parent.mkdir(parents=True, exist_ok=True)
    # One actor of a node unpacks; its neighbours wait for it, then find the copy whole.
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _holds(target, shipment.onnx_sha256):
            _unpack(fetch(), target)
    return str(target)


def _holds(target: Path, sha256: str) -> bool:
    model = target / MODEL_FILE
    return model.is_file() and sha256_file(model) == sha256


def _unpack(files: dict[str, np.ndarray], target: Path) -> None:
    """Writes the files beside target, then renames the whole directory into place: a killed
    actor leaves a temporary directory, never a half-written model where loaders look."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            data.tofile(staging / name)
        shutil.rmtree(target, ignore_errors=True)  # a damaged copy
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
