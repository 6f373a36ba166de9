"""The model directory `embedpipe export` writes, for fp32, int8, prompts and gte-large's shape."""

import json

import numpy as np
import onnx
import pytest

from export.parity import cosines, reference_embed
from export.stand_in import build_stand_in
from tests.conftest import MINILM, PROMPTS, export
from workers import Embedder, EmbedOptions, OptionError
from workers.files import sha256_file
from workers.model_dir import CARD_FILE, MODEL_FILE, TOKENIZER_FILE, read_card


def test_model_directory_holds_the_three_files(minilm_dir):
    assert sorted(p.name for p in minilm_dir.iterdir()) == sorted(
        [MODEL_FILE, TOKENIZER_FILE, CARD_FILE]
    )


def test_card_describes_the_model(minilm_dir):
    card = read_card(minilm_dir)
    assert (card.source, card.dim, card.pooling, card.max_seq_length) == (MINILM, 384, "mean", 256)
    assert card.dtype == "fp32" and card.opset >= 14
    assert card.onnx_sha256 == sha256_file(minilm_dir / MODEL_FILE)
    assert card.prompts == {}
    assert {"torch", "transformers", "onnx"} <= card.versions.keys()
    assert card.parity["passed"] and card.parity["min_cosine"] >= 0.9999


def test_every_layer_is_fused(minilm_dir):
    fused = read_card(minilm_dir).fused_operators
    assert fused["Attention"] == 6 and fused["BiasGelu"] == 6
    assert fused["EmbedLayerNormalization"] == 1


@pytest.mark.parametrize("fixture", ["minilm_dir", "minilm_int8_dir"])
def test_graphs_the_cpu_runs_keep_layer_norm_apart_from_its_residual_add(fixture, request):
    """onnxruntime's CPU SkipLayerNormalization kernel is the slow one (export/layer_norm.py)."""
    model_dir = request.getfixturevalue(fixture)
    ops = [n.op_type for n in onnx.load(str(model_dir / MODEL_FILE)).graph.node]
    assert ops.count("SkipLayerNormalization") == 0 and ops.count("LayerNormalization") == 12
    assert read_card(model_dir).fused_operators["LayerNormalization"] == 12


def test_graph_takes_ids_and_mask_and_gives_the_pooled_vector(minilm_dir):
    graph = onnx.load(str(minilm_dir / MODEL_FILE), load_external_data=False).graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert inputs == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64}
    assert [o.name for o in graph.output] == ["sentence_embedding"]
    dims = graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 384


def test_graph_output_is_not_normalized(minilm_dir):
    raw = Embedder.load(minilm_dir).embed(
        ["not normalized in the graph"], EmbedOptions(normalize=False)
    )
    assert abs(float(np.linalg.norm(raw.vectors[0])) - 1.0) > 0.1


def test_tokenizer_has_padding_and_truncation_off(minilm_dir):
    saved = json.loads((minilm_dir / TOKENIZER_FILE).read_text())
    assert saved["padding"] is None and saved["truncation"] is None


def test_int8_export_is_smaller_and_close_to_fp32(minilm_dir, minilm_int8_dir, parity_texts):
    card = read_card(minilm_int8_dir)
    assert card.dtype == "int8" and card.parity["passed"] and card.weight_bits == 8
    assert read_card(minilm_dir).weight_bits is None
    size = (minilm_int8_dir / MODEL_FILE).stat().st_size
    assert size < 0.7 * (minilm_dir / MODEL_FILE).stat().st_size
    texts = parity_texts[::4]
    fp32 = Embedder.load(minilm_dir).embed(texts).vectors
    int8 = Embedder.load(minilm_int8_dir).embed(texts).vectors
    sims = cosines(int8, fp32)
    assert sims.mean() >= 0.98 and sims.min() >= 0.9


def quantized_weights(graph_path) -> list[np.ndarray]:
    """The int8 weight initializers of a quantized graph."""
    graph = onnx.load(str(graph_path)).graph
    found = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    return [w for w in found if w.dtype == np.int8 and w.size >= 1024]


def test_seven_bit_int8_weights_fit_seven_bits_and_stay_close_to_fp32(
    minilm_dir, parity_texts, tmp_path
):
    """--weight-bits 7 (CPUs without VNNI): every weight within -64..63, vectors still int8's."""
    import shutil

    from export.optimize import quantize_int8

    seven = tmp_path / "seven"
    shutil.copytree(minilm_dir, seven)
    quantize_int8(minilm_dir / MODEL_FILE, seven / MODEL_FILE, weight_bits=7)
    quantize_int8(minilm_dir / MODEL_FILE, tmp_path / "eight.onnx", weight_bits=8)
    weights = quantized_weights(seven / MODEL_FILE)
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    eight = quantized_weights(tmp_path / "eight.onnx")
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in eight) > 64
    texts = parity_texts[::4]
    fp32 = Embedder.load(minilm_dir).embed(texts).vectors
    got = Embedder.load(seven, verify_checksum=False, canary=False).embed(texts).vectors
    sims = cosines(got, fp32)
    assert sims.mean() >= 0.98 and sims.min() >= 0.9


def test_weight_bits_is_refused_for_a_float_export(tmp_path, capsys):
    from pipelines.cli import main

    code = main(["export", "--model", MINILM, "--out", str(tmp_path / "m"), "--weight-bits", "7"])
    assert code == 1 and "--weight-bits is for int8 exports, not fp32" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_fp16_export_has_fp16_weights_float_io_and_passes_parity(
    minilm_dir, minilm_fp16_dir, parity_texts
):

    card = read_card(minilm_fp16_dir)
    assert card.dtype == "fp16" and card.parity["passed"] and card.parity["min_cosine"] >= 0.999
    graph = onnx.load(str(minilm_fp16_dir / MODEL_FILE)).graph
    weights = [t for t in graph.initializer if int(np.prod(t.dims)) >= 1024]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
    size = (minilm_fp16_dir / MODEL_FILE).stat().st_size
    assert size < 0.6 * (minilm_dir / MODEL_FILE).stat().st_size
    texts = parity_texts[::8]
    fp16 = Embedder.load(minilm_fp16_dir).embed(texts)
    assert fp16.vectors.dtype == np.float32
    assert cosines(fp16.vectors, Embedder.load(minilm_dir).embed(texts).vectors).min() >= 0.999


def test_no_optimize_leaves_the_graph_unfused_and_exact(tmp_path):
    out = export(MINILM, tmp_path / "plain", "--no-optimize")
    card = read_card(out)
    assert card.fused_operators == {} and card.parity["min_cosine"] >= 0.9999


def test_existing_directory_is_not_overwritten_without_force(minilm_dir, tmp_path):
    from pipelines.cli import main

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", "--model", MINILM, "--out", str(taken)]) == 1
    assert (taken / "keep.txt").read_text() == "mine"


def test_prompts_come_from_the_model_config(prompt_dir):
    assert read_card(prompt_dir).prompts == PROMPTS


@pytest.mark.parametrize("name", ["query", "passage"])
def test_prompt_name_equals_sentence_transformers(prompt_dir, prompt_src, parity_texts, name):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(prompt_src), device="cpu")
    texts = parity_texts[::8]
    options = EmbedOptions(prompt_name=name)
    got = Embedder.load(prompt_dir).embed(texts, options)
    assert cosines(got.vectors, reference_embed(reference, texts, options)).min() >= 0.9999
    plain = Embedder.load(prompt_dir).embed(texts)
    assert cosines(got.vectors, plain.vectors).mean() < 0.999  # the prompt changed the vector


def test_unknown_prompt_name_lists_the_prompts(prompt_dir):
    with pytest.raises(OptionError, match="passage, query"):
        Embedder.load(prompt_dir).embed(["x"], EmbedOptions(prompt_name="nope"))


@pytest.mark.slow
def test_gte_large_width_exports_and_embeds_to_1024_dims_at_512_tokens(tmp_path):
    """gte-large's hidden size, heads, intermediate size, positions and vocabulary at 2 of its
    24 layers (depth repeats the same layer: the full one took 4 of CI's 30 minutes)."""
    src = build_stand_in(tmp_path / "gte-large-random", "gte-large-shallow")
    out = export(src, tmp_path / "gte-large-fp32")
    card = read_card(out)
    assert (card.dim, card.max_seq_length, card.pooling) == (1024, 512, "mean")
    assert card.fused_operators["Attention"] == 2
    assert card.parity["passed"] and card.parity["min_cosine"] >= 0.9999
    got = Embedder.load(out).embed(["a query", "word " * 700])
    assert got.vectors.shape == (2, 1024) and got.n_tokens.tolist() == [4, 512]
