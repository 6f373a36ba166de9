"""SkipLayerNormalization split back into Add and LayerNormalization (export/layer_norm.py): the
same numbers as onnxruntime's fused kernel, every optional input and output kept."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.layer_norm import split_skip_layer_norm

ROWS, HIDDEN = 6, 16
MS = "com.microsoft"


def two_layer_graph(mean_read: bool = False) -> onnx.ModelProto:
    """x -> SLN(skip, gamma, beta, bias; its input+skip+bias sum read by the next) -> SLN(no
    beta, no bias, no epsilon attribute) -> y; mean_read: the first node's mean is an output."""
    rng = np.random.default_rng(0)
    weights = {
        name: rng.standard_normal(HIDDEN).astype(np.float32)
        for name in ("gamma", "beta", "bias", "gamma2")
    }
    first = helper.make_node(
        "SkipLayerNormalization",
        ["x", "skip", "gamma", "beta", "bias"],
        ["normed", "mean" if mean_read else "", "", "summed"],
        name="sln1",
        domain=MS,
        epsilon=1e-5,
    )
    second = helper.make_node(
        "SkipLayerNormalization", ["normed", "summed", "gamma2"], ["y"], name="", domain=MS
    )
    tensor = [1, ROWS, HIDDEN]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, tensor)]
    if mean_read:
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        [first, second],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, tensor) for n in ("x", "skip")],
        outputs,
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(
        model.SerializeToString(),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["SkipLayerNormFusion"],
    )
    return np.asarray(session.run(["y"], feed)[0])


def test_split_graph_gives_the_fused_kernels_numbers():
    rng = np.random.default_rng(1)
    feed = {n: rng.standard_normal((1, ROWS, HIDDEN)).astype(np.float32) for n in ("x", "skip")}
    fused = two_layer_graph()
    split = two_layer_graph()
    assert split_skip_layer_norm(split.graph) == 2
    onnx.checker.check_model(split)
    ops = [n.op_type for n in split.graph.node]
    assert ops == ["Add", "Add", "LayerNormalization", "Add", "LayerNormalization"]
    np.testing.assert_allclose(run(split, feed), run(fused, feed), atol=1e-5)


def test_epsilon_is_written_out_because_layer_norms_default_differs():
    split = two_layer_graph()
    split_skip_layer_norm(split.graph)
    norms = [n for n in split.graph.node if n.op_type == "LayerNormalization"]
    epsilons = [next(a.f for a in n.attribute if a.name == "epsilon") for n in norms]
    np.testing.assert_allclose(epsilons, [1e-5, 1e-12])
    assert len({n.name for n in split.graph.node}) == len(split.graph.node)


def test_a_node_whose_statistics_are_read_stays_fused():
    model = two_layer_graph(mean_read=True)
    assert split_skip_layer_norm(model.graph) == 1
    assert [n.op_type for n in model.graph.node][:2] == ["SkipLayerNormalization", "Add"]
