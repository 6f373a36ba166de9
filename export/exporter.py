"""`embedpipe export`: source model -> model directory (model.onnx, tokenizer.json, card).

Everything is built in a hidden directory beside OUT and renamed into place only once parity
has been measured and passed, so OUT is either the previous complete export or the new one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from export.graph import OPSET, export_graph
from export.optimize import fuse, quantize_int8, to_fp16
from export.parity import THRESHOLDS, builtin_texts, measure
from export.source import ExportError, Source, load_source
from workers import Embedder
from workers.model_dir import (
    CARD_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    ModelCard,
    sha256_file,
    write_atomic,
)
from workers.session import resolve_device

log = logging.getLogger(__name__)
EXPORT_DTYPES = ("fp32", "fp16", "int8")
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime-gpu")


def export_model(
    src: str,
    out: str | Path,
    dtype: str = "fp32",
    optimize: bool = True,
    trust_remote_code: bool = False,
    force: bool = False,
) -> ModelCard:
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty; pass --force to replace it")
    source = load_source(src, trust_remote_code)
    work = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        card = _build(source, work, dtype, optimize)
        _replace_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return card


def _build(source: Source, work: Path, dtype: str, optimize: bool) -> ModelCard:
    transformer = source.model[0].auto_model
    log.info("exporting %s to ONNX (opset %d)", source.source_id, OPSET)
    graph = work / "graph.onnx"
    export_graph(transformer, source.pooling, graph)
    fused: dict[str, int] = {}
    if optimize:
        log.info("fusing attention, layer norm and GELU")
        fused = fuse(graph, work / "fused.onnx", transformer.config)
        graph = work / "fused.onnx"
    if dtype == "int8":
        log.info("quantizing MatMul and Attention weights to int8")
        quantize_int8(graph, work / MODEL_FILE)
    elif dtype == "fp16":
        log.info("converting the graph to fp16 (inputs, output and pooling stay as they are)")
        to_fp16(graph, work / MODEL_FILE)
    else:
        graph.rename(work / MODEL_FILE)
    for leftover in work.glob("*.onnx"):
        if leftover.name != MODEL_FILE:
            leftover.unlink()
    _save_tokenizer(source, work / TOKENIZER_FILE)
    card = ModelCard(
        source=source.source_id,
        revision=source.revision,
        onnx_sha256=sha256_file(work / MODEL_FILE),
        dim=int(transformer.config.hidden_size),  # mean, cls and max keep the width
        pooling=source.pooling,
        max_seq_length=source.max_seq_length,
        dtype=dtype,
        opset=OPSET,
        prompts=source.prompts,
        default_prompt_name=source.default_prompt_name,
        fused_operators=fused,
        versions=_versions(),
    )
    write_atomic(work / CARD_FILE, card.to_json())
    return _with_parity(card, source, work)


def _with_parity(card: ModelCard, source: Source, work: Path) -> ModelCard:
    # fp16 is a GPU format: measured on the GPU where there is one; onnxruntime's CPU kernels
    # run it too (slowly), so a machine without one still checks the export before writing it.
    device = resolve_device("auto") if card.dtype == "fp16" else "cpu"
    log.info("measuring parity against sentence-transformers on the %s", device)
    embedder = Embedder.load(work, device=device, verify_checksum=False)
    report = measure(embedder, source.model, builtin_texts(), THRESHOLDS[card.dtype])
    if not report.passed:
        raise ExportError(
            f"parity failed: min cosine {report.min_cosine:.6f} to sentence-transformers is "
            f"under {report.threshold} for {card.dtype}; the export was not written"
        )
    card = dataclasses.replace(card, parity={**report.as_dict(), "device": device})
    write_atomic(work / CARD_FILE, card.to_json())
    return card


def _save_tokenizer(source: Source, path: Path) -> None:
    from tokenizers import Tokenizer

    backend = source.model.tokenizer.backend_tokenizer
    tokenizer = Tokenizer.from_str(backend.to_str())
    # Export tools bake a fixed padding into tokenizer.json; left on, every text would be
    # padded (or cut) to that length and the vectors would be wrong.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(path))


def _replace_dir(new: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
