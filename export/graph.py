"""The ONNX graph: the transformer plus its pooling, so only rows x dim floats leave the device.

torch.onnx's TorchScript exporter is used: its graph is the one onnxruntime's BERT fusion
patterns were written for, and the tests check that every layer's attention is fused. Pooling
copies sentence-transformers' formulas, so parity is exact up to float order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from workers.model_dir import GRAPH_INPUTS, GRAPH_OUTPUT

OPSET = 17


class PooledEncoder(torch.nn.Module):
    def __init__(self, transformer: Any, pooling: str) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            # sentence-transformers fills padding with -1e9 before the max
            return torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values
        summed = (hidden * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)


def export_graph(transformer: Any, pooling: str, path: Path) -> None:
    transformer = transformer.eval()
    with eager_attention(transformer):
        _trace(PooledEncoder(transformer, pooling).eval(), path)


@contextmanager
def eager_attention(transformer: Any) -> Iterator[None]:
    """transformers 5 runs BERT on torch's SDPA by default; traced, that becomes a graph
    onnxruntime's fusion does not recognise (no Attention node at all). The eager path computes
    the same values with the MatMul/Softmax pattern the fusion was written for."""
    setter = getattr(transformer, "set_attn_implementation", None)
    before = getattr(transformer.config, "_attn_implementation", None)
    if setter is None or before in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


def _trace(module: torch.nn.Module, path: Path) -> None:
    # Two rows of different lengths, so nothing is traced as a constant shape.
    input_ids = torch.full((2, 16), 1000, dtype=torch.long)
    attention_mask = torch.ones((2, 16), dtype=torch.long)
    attention_mask[1, 9:] = 0
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {v: k for k, v in axes.items()} for name in GRAPH_INPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (input_ids, attention_mask),
            str(path),
            # a list: the TorchScript exporter concatenates input and output names, whatever
            # its Sequence annotation says
            input_names=list(GRAPH_INPUTS),
            output_names=[GRAPH_OUTPUT],
            dynamic_axes={**dynamic, GRAPH_OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
