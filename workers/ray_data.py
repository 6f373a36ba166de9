"""embedpipe's embedder inside a Ray Data pipeline: a callable class for `map_batches`.

    ds.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={"model_dir": "models/all-MiniLM-L6-v2-fp32"},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=2,  # or num_gpus=1: device "auto" (the default) then embeds on the GPU
    )

Each actor loads the exported model once; each batch comes back with four columns added:
`embedding` (fixed_size_list<float32>[dim], the vectors `embedpipe run` writes for the same text
and options: the embedder is batch-invariant; with runtime="openvino", to fp32 rounding),
`n_tokens` (int32), `truncated` (bool) and `reject_reason` (string, null where embedded). A
text that cannot be embedded (null, empty, too long under truncate=False) keeps its row, with a
null embedding and the reason: rows are never dropped. The column is a plain Arrow fixed-size
list, which Ray Data's write_parquet writes as it is, so polars, DuckDB and pyarrow read it as
embedpipe's own output (not Ray's tensor extension type, which appears only for numpy batches).

On a cluster of several nodes the export need not be on every node: `ship_model(model_dir)`,
called once on the driver, puts its files into Ray's object store, and passed as `model_dir` it
has each node's first actor unpack them into a node-local cache named by the model's sha256, as
`embedpipe run` ships its model (workers/model_shipment.py).

Ray Data is imported by nothing here: this module needs only pyarrow and the embedder, so the
class also works on a pyarrow Table outside Ray.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pyarrow as pa

from workers.embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder
from workers.model_shipment import ModelShipment, model_dir_on_this_node, ship_model
from workers.options import EmbedOptions

__all__ = ["ADDED", "EmbedBatches", "ship_model"]

ADDED = ("embedding", "n_tokens", "truncated", "reject_reason")
# Padded tokens per model batch unless given: a CPU's batches should stay in its cache (the
# embedder's default, 2048, beat 32768 by 35%), a GPU wants large ones (conf/gte-large.yaml).
DEFAULT_BATCH_TOKENS = {"cpu": DEFAULT_MAX_BATCH_TOKENS, "cuda": 16384}


class EmbedBatches:
    """Adds embeddings to Ray Data batches (pyarrow Tables) of one text column."""

    def __init__(
        self,
        model_dir: str | Path | ModelShipment,
        text_column: str = "text",
        *,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
        prompt_name: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        max_batch_tokens: int | None = None,
        runtime: str = "onnxruntime",
    ) -> None:
        """device: auto (cuda where map_batches gave this actor a GPU, else cpu), cpu or cuda.
        max_batch_tokens: None is 2048 on the CPU, 16384 on a GPU."""
        device = actor_device(device)
        self.text_column = text_column
        self.options = EmbedOptions(
            normalize=normalize,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
        )
        self.embedder = Embedder.load(
            local_model_dir(model_dir),
            device=device,
            threads=threads,
            max_batch_tokens=batch_tokens(device, max_batch_tokens),
            parallel_batches=True,
            runtime=runtime,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):
            raise TypeError(
                f"EmbedBatches takes pyarrow Tables, got {type(batch).__name__}: pass "
                "batch_format='pyarrow' to map_batches"
            )
        if self.text_column not in batch.column_names:
            raise KeyError(
                f"the batch has no column {self.text_column!r} (it has {batch.column_names}); "
                "pass text_column in fn_constructor_kwargs"
            )
        if clash := [name for name in ADDED if name in batch.column_names]:
            raise ValueError(f"the batch already has {clash}: rename them before embedding")
        texts = batch.column(self.text_column).to_pylist()
        found = self.embedder.embed(texts, self.options)
        ok = found.ok
        return (
            batch.append_column("embedding", _vectors(found.vectors, ok))
            .append_column("n_tokens", pa.array(found.n_tokens, pa.int32()))
            .append_column("truncated", pa.array(found.truncated & ok, pa.bool_()))
            .append_column("reject_reason", pa.array(list(found.errors), pa.string()))
        )


def batch_tokens(device: str, asked: int | None) -> int:
    """What was asked, else the device's default (an unknown device is refused by the load)."""
    return DEFAULT_BATCH_TOKENS.get(device, DEFAULT_BATCH_TOKENS["cpu"]) if asked is None else asked


def actor_device(device: str) -> str:
    """'auto' is cuda where Ray gave this process a GPU (map_batches' num_gpus), else cpu: an
    actor given a GPU must not embed on its CPU at a fraction of the speed without a word, and
    one without a GPU must not take another actor's. Other values pass as they are."""
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"


def local_model_dir(model_dir: str | Path | ModelShipment) -> str | Path:
    """The export to load on this node: a path as given; for ship_model's shipment, the driver's
    directory on the driver's node, else this node's cached copy (unpacked on first use)."""
    if isinstance(model_dir, ModelShipment):
        return model_dir_on_this_node(model_dir)
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(
            f"model_dir {str(model_dir)!r} is not a directory on this node "
            f"({socket.gethostname()}): on a cluster whose nodes do not all have the export, "
            f"pass model_dir=ship_model({str(model_dir)!r}) (from workers.ray_data), called once "
            "on the driver, which ships it to the nodes through Ray's object store"
        )
    return model_dir


def _vectors(vectors: np.ndarray, ok: np.ndarray) -> pa.Array:
    """(n, dim) float32 as fixed_size_list<float32>[dim], null where the text was rejected."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(np.where(ok[:, None], vectors, 0), np.float32).ravel())
    mask = pa.array(~ok)
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)
