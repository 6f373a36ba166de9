"""Attention layouts of an export (`--attention`): each graph's structure everywhere, and its
parity wherever onnxruntime's CPU provider has kernels for it (the GPU tests cover the rest)."""

from collections import Counter

import onnx
import pytest

from export.exporter import export_model
from export.parity import cosines, reference_embed
from export.source import ExportError
from tests.conftest import export, has_gpu
from workers import Embedder, EmbedOptions
from workers.errors import DeviceError
from workers.model_dir import MODEL_FILE, read_card

# The tiny stand-in has 2 layers: every one of them in the layout's form, nothing left unfused.
EXPECTED = {
    "attention": {"Attention": 2},
    "mha": {"MultiHeadAttention": 2},
    "packed": {"PackedAttention": 2, "RemovePadding": 1, "RestorePadding": 1},
    "packed-mha": {"PackedMultiHeadAttention": 2, "RemovePadding": 1, "RestorePadding": 1},
}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention"}


def graph_ops(model_dir) -> Counter:
    graph = onnx.load(str(model_dir / MODEL_FILE)).graph
    return Counter(node.op_type for node in graph.node)


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_every_layer_has_the_layouts_attention_and_the_card_says_which(layout, tiny_dirs):
    model_dir = tiny_dirs[f"fp16-{layout}"]
    ops, card = graph_ops(model_dir), read_card(model_dir)
    assert card.attention == layout
    assert {op: ops[op] for op in EXPECTED[layout]} == EXPECTED[layout]
    assert {op for op in ATTENTION_OPS if ops[op]} == set(EXPECTED[layout]) & ATTENTION_OPS
    assert all(card.fused_operators[op] == n for op, n in EXPECTED[layout].items())


@pytest.mark.parametrize("layout", ["attention", "mha"])
def test_layouts_the_cpu_can_run_match_sentence_transformers(
    layout, tiny_dirs, tiny_st_model, parity_texts
):
    model_dir = tiny_dirs[f"fp16-{layout}"]
    assert read_card(model_dir).parity["measured"] and read_card(model_dir).parity["passed"]
    texts = parity_texts[:64]
    ours = Embedder.load(model_dir, device="cpu").embed(texts).vectors
    sims = cosines(ours, reference_embed(tiny_st_model, texts, EmbedOptions()))
    assert sims.min() >= 0.999, f"{layout}: min cosine {sims.min():.6f}"


@pytest.mark.skipif(has_gpu(), reason="with a GPU, parity of every layout is measured")
@pytest.mark.parametrize("layout", ["packed", "packed-mha"])
def test_padding_free_layouts_say_their_parity_waits_for_a_gpu(layout, tiny_dirs):
    parity = read_card(tiny_dirs[f"fp16-{layout}"]).parity
    assert parity["measured"] is False and "no CPU kernels" in parity["reason"]


def test_fp16_graphs_keep_skip_layer_norm_fused_for_the_gpu(tiny_dirs):
    """Only the graphs the CPU runs split it (export/layer_norm.py); fp16 is the CUDA format."""
    assert graph_ops(tiny_dirs["fp16-attention"])["SkipLayerNormalization"] == 4  # 2 layers
    assert graph_ops(tiny_dirs["fp32-attention"])["SkipLayerNormalization"] == 0


def test_the_cli_writes_the_layout_asked_for(tiny_src, tmp_path):
    out = export(tiny_src, tmp_path / "mha", "--attention", "mha")
    assert read_card(out).attention == "mha" and graph_ops(out)["MultiHeadAttention"] == 2


@pytest.mark.parametrize(
    ("dtype", "optimize", "message"),
    [("int8", True, "int8 quantizes the Attention layout only"), ("fp16", False, "--no-optimize")],
)
def test_a_layout_that_cannot_be_built_is_refused_before_any_work(
    dtype, optimize, message, tmp_path
):
    with pytest.raises(ExportError, match=message):
        export_model("/nonexistent", tmp_path / "m", dtype, optimize, attention="packed")
    assert not (tmp_path / "m").exists()


def test_fp16_defaults_to_the_layout_measured_fastest_on_a_gpu_and_fp32_to_attention(
    tiny_src, tmp_path
):
    fp16 = export(tiny_src, tmp_path / "fp16", "--dtype", "fp16")
    fp32 = export(tiny_src, tmp_path / "fp32")
    assert (read_card(fp16).attention, read_card(fp32).attention) == ("packed-mha", "attention")


@pytest.mark.parametrize("layout", ["packed", "packed-mha"])
def test_a_cuda_only_layout_on_the_cpu_is_refused_with_the_fix(layout, tiny_dirs):
    with pytest.raises(DeviceError, match=f"{layout} attention layout, which runs on CUDA only"):
        Embedder.load(tiny_dirs[f"fp16-{layout}"], device="cpu")
