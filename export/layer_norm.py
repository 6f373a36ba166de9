"""SkipLayerNormalization back to Add and LayerNormalization, for the graphs the CPU runs.

onnxruntime's fusion turns each residual `Add (+ bias Add) -> LayerNormalization` of a BERT
layer into one SkipLayerNormalization. On the GPU that saves memory passes; on the CPU,
onnxruntime 1.31's SkipLayerNormalization kernel is the slow one: 3.2 us a row of 384 against
1.1 us for the two Adds and LayerNormalization it replaces (one thread, 2,048 rows, this
project's 2-core Xeon), and 19% of an int8 MiniLM's time over the stdlib corpus. Split again,
the fp32 and int8 MiniLM exports took 0.855x and 0.86x the time over the same batches (one in
eight of the corpus's, one thread). The arithmetic is the kernel's own, in its own order (input
+ skip, then + bias), so the fp32 vectors keep a cosine of 1.00000 to the fused graph's.

onnxruntime does not fuse the pair back on the CPU provider; the session also names the fusion
as disabled there (workers/session.py), so a later onnxruntime that learns to cannot undo it.
"""

from __future__ import annotations

import onnx
from onnx import helper

# SkipLayerNormalization's epsilon when the node has none (onnxruntime's contrib op schema);
# LayerNormalization's own default is 1e-5, so the value is always written out.
SKIP_LN_DEFAULT_EPSILON = 1e-12


def split_skip_layer_norm(graph: onnx.GraphProto) -> int:
    """Rewrites every SkipLayerNormalization of graph in place, in the same position; returns
    how many. A node whose mean or inverse-variance output is read, by a node or as a graph
    output (training graphs), stays."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type == "SkipLayerNormalization" and not _statistics_read(node, read):
            nodes.extend(_split(node, node.name or f"SkipLayerNorm_{count}"))
            count += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _statistics_read(node: onnx.NodeProto, read: set[str]) -> bool:
    return any(name and name in read for name in node.output[1:3])


def _split(node: onnx.NodeProto, name: str) -> list[onnx.NodeProto]:
    inputs = [*node.input, "", "", ""]
    x, skip, gamma, beta, bias = inputs[:5]
    outputs = [*node.output, "", "", ""]
    # The fourth output is the sum the norm was taken of (pre-norm graphs read it).
    total = outputs[3] or f"{name}_sum"
    summed = f"{name}_skip_sum" if bias else total
    split = [helper.make_node("Add", [x, skip], [summed], name=f"{name}_add")]
    if bias:
        split.append(helper.make_node("Add", [summed, bias], [total], name=f"{name}_bias"))
    split.append(
        helper.make_node(
            "LayerNormalization",
            [total, gamma, *([beta] if beta else [])],
            [outputs[0]],
            name=f"{name}_norm",
            axis=-1,
            epsilon=_epsilon(node),
        )
    )
    return split


def _epsilon(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "epsilon"), SKIP_LN_DEFAULT_EPSILON)
