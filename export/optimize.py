"""Graph rewrites after export: onnxruntime's transformer fusion (in one of four attention
layouts), fp16 conversion and int8 dynamic quantization.

Attention layouts (`--attention`; the card's `attention` key). Which CUDA kernel onnxruntime runs
depends on the operator and its mask, so the layout decides whether attention is flash, fused
or the unfused math kernel on a given GPU; `make gpu-check` measures each:
- `attention`: the fused `Attention` op with a 1-D mask index (sequence lengths). Runs on every
  provider; on Hopper, onnxruntime's flash and memory-efficient kernels refuse this mask.
- `mha`: `MultiHeadAttention` with the same 1-D key lengths, the one mask cuDNN's flash
  attention takes (the session enables it: workers/session.py). Runs on the CPU too.
- `packed`: `Attention` in padding-free form (RemovePadding -> PackedAttention ->
  RestorePadding): every MatMul of every layer skips the padded positions too. CUDA only.
- `packed-mha`: the same with `PackedMultiHeadAttention`, whose CUDA kernel is flash attention
  over variable-length sequences. CUDA only.
Packing is applied last, to the fp16 graph, as onnxruntime's own tool expects.

Fusion (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) is done once here,
offline, with onnxruntime's own optimizer, so every worker loads the fast graph. The graphs the
CPU runs (fp32 and int8 in the attention and mha layouts) have SkipLayerNormalization split
back into Add and LayerNormalization, faster on onnxruntime's CPU provider (layer_norm.py).

int8 quantizes only the MatMul and Attention weights, per output channel: quantizing the
embedding tables too (the default) cost 0.04 in mean cosine to fp32 on the stdlib corpus for no
measurable speed.

fp16 converts the graph with onnxruntime's own converter, which is plain graph surgery (no GPU
needed to build it) and follows its advice: graph inputs and output stay as they are (int64 in,
float32 out), the fused Attention and SkipLayerNormalization kernels accumulate softmax and
layer-norm statistics in fp32 themselves, and standalone LayerNormalization and Softmax (an
unfused graph) stay fp32. The pooling is converted too: onnxruntime's CUDA reductions accumulate
half in float, and only the pooled vector is stored in fp16 (about 3 significant digits, 1e-7 in
cosine). Keeping the pooling nodes fp32 with the converter's node_block_list was tried: in
onnxruntime 1.31 it emits two Cast nodes of one name for a tensor two blocked nodes read, an
invalid graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from export.layer_norm import split_skip_layer_norm
from export.source import ExportError
from workers.model_dir import ATTENTION_LAYOUTS

# Model types whose graphs onnxruntime's 'bert' fusion patterns cover.
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")


# fp16 is the CUDA format, and packed-mha its fastest layout on an H200 (gte-large's shape,
# ~250-token documents, bench/results/gpu.json): 562,253 tokens/s against 487,578 for packed,
# 230,104 for mha and 220,467 for attention. fp32 and int8 serve CPUs too: attention.
FP16_DEFAULT = "packed-mha"


def default_layout(dtype: str, optimize: bool = True) -> str:
    return FP16_DEFAULT if dtype == "fp16" and optimize else "attention"


def fuse(
    src: Path, dst: Path, config: Any, attention: str = "attention", for_cpu: bool = False
) -> dict[str, int]:
    """Writes the fused graph to dst; returns the count of each fused operator found. for_cpu:
    a graph the CPU runs (fp32, int8) gets its SkipLayerNormalization split again
    (export/layer_norm.py says why)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if config.model_type not in BERT_LIKE:
        raise ExportError(
            f"onnxruntime's fusion does not cover model type {config.model_type!r} "
            f"(covered: {', '.join(BERT_LIKE)}); export with --no-optimize"
        )
    check_layout(attention)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    options = FusionOptions("bert")
    options.use_multi_head_attention = attention in ("mha", "packed-mha")
    model = optimize_model(
        str(src),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,  # python fusions only: the session applies its own at load time
        optimization_options=options,
    )
    if for_cpu:
        split_skip_layer_norm(model.model.graph)
    model.save_model_to_file(str(dst))
    stats = model.get_fused_operator_statistics()
    return {op: int(n) for op, n in sorted(stats.items()) if n}


def check_layout(attention: str) -> None:
    if attention not in ATTENTION_LAYOUTS:
        raise ExportError(
            f"--attention must be one of {', '.join(ATTENTION_LAYOUTS)}, got {attention!r}"
        )


def pack(src: Path, dst: Path) -> dict[str, int]:
    """The padding-free form of a fused graph; returns the count of each packed operator."""
    import onnx
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    PackingMode(model).convert()
    counts: dict[str, int] = {}
    for node in model.nodes():
        if node.op_type.startswith("Packed") or node.op_type.endswith("Padding"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if "RemovePadding" not in counts:
        raise ExportError(
            "onnxruntime's packing found no attention to convert (is attention fused?): "
            "export with --attention attention"
        )
    model.save_model_to_file(str(dst))
    return counts


# int8 weights in 8 bits, or 7 (onnxruntime's reduce_range): without VNNI (AVX2 only),
# onnxruntime's int8 kernel sums pairs of u8 x s8 products in 16 bits (vpmaddubsw), which can
# saturate; 7-bit weights cannot (2 x 255 x 64 < 32768). onnxruntime's quantize_dynamic docs give
# 7 bits for CPUs without VNNI, 8 for those with it.
WEIGHT_BITS = (8, 7)


def quantize_int8(src: Path, dst: Path, weight_bits: int = 8) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=weight_bits == 7,
        op_types_to_quantize=["MatMul", "Attention"],
        # Shape inference cannot type the outputs of fused contrib ops; they are all float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


KEEP_FP32_OPS = ["LayerNormalization", "Softmax"]


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS],
    )
    model.save_model_to_file(str(dst))
