"""Graph rewrites after export: onnxruntime's transformer fusion, fp16 conversion and int8
dynamic quantization.

Fusion (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) is done once here,
offline, with onnxruntime's own optimizer, so every worker loads the fast graph. int8 quantizes
only the MatMul and Attention weights, per output channel: quantizing the embedding tables too
(the default) cost 0.04 in mean cosine to fp32 on the stdlib corpus for no measurable speed.

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

from export.source import ExportError

# Model types whose graphs onnxruntime's 'bert' fusion patterns cover.
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")


def fuse(src: Path, dst: Path, config: Any) -> dict[str, int]:
    """Writes the fused graph to dst; returns the count of each fused operator found."""
    from onnxruntime.transformers.optimizer import optimize_model

    if config.model_type not in BERT_LIKE:
        raise ExportError(
            f"onnxruntime's fusion does not cover model type {config.model_type!r} "
            f"(covered: {', '.join(BERT_LIKE)}); export with --no-optimize"
        )
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    model = optimize_model(
        str(src),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,  # python fusions only: the session applies its own at load time
    )
    model.save_model_to_file(str(dst))
    stats = model.get_fused_operator_statistics()
    return {op: int(n) for op, n in sorted(stats.items()) if n}


def quantize_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
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
