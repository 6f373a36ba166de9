"""`embedpipe export`: source model -> model directory (model.onnx, tokenizer.json, card).

Everything is built in a hidden directory beside OUT and renamed into place only once parity
has been measured and passed, so OUT is either the previous complete export or the new one.
`export_layouts` writes one directory per attention layout from a single load and trace of the
source (the GPU check compares them without paying for the trace four times).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from export.graph import OPSET, export_graph
from export.optimize import (
    WEIGHT_BITS,
    check_layout,
    default_layout,
    fuse,
    pack,
    quantize_int8,
    to_fp16,
)
from export.parity import THRESHOLDS, builtin_texts, canary_texts, measure, reference_embed
from export.source import ExportError, Source, load_source
from workers import Embedder, EmbedOptions
from workers.files import sha256_file, write_atomic
from workers.model_dir import (
    CARD_FILE,
    CUDA_ONLY_LAYOUTS,
    DTYPES,
    MODEL_FILE,
    TOKENIZER_FILE,
    ModelCard,
)
from workers.session import resolve_device

log = logging.getLogger(__name__)
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime-gpu")


@dataclass(frozen=True)
class Plan:
    """What one export writes: its dtype, whether fused, the attention layout, and for int8 the
    bits of its weights (None: 8)."""

    dtype: str = "fp32"
    optimize: bool = True
    attention: str = "attention"
    weight_bits: int | None = None

    @property
    def int8_weight_bits(self) -> int | None:
        """The card's weight_bits: 8 or 7 for int8, None for the float dtypes."""
        return (self.weight_bits or 8) if self.dtype == "int8" else None

    @property
    def for_cpu(self) -> bool:
        """A graph the CPU can run: fp32 or int8 (fp16 is the CUDA format), unpacked."""
        return self.dtype != "fp16" and self.attention not in CUDA_ONLY_LAYOUTS

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_layout(self.attention)
        if self.attention != "attention" and not self.optimize:
            raise ExportError(f"--attention {self.attention} is a fused layout; drop --no-optimize")
        if self.weight_bits is not None and self.dtype != "int8":
            raise ExportError(f"--weight-bits is for int8 exports, not {self.dtype}")
        if self.weight_bits is not None and self.weight_bits not in WEIGHT_BITS:
            raise ExportError(f"--weight-bits must be 8 or 7, got {self.weight_bits}")
        if self.attention != "attention" and self.dtype == "int8":
            raise ExportError(
                f"--attention {self.attention} is for fp16 or fp32 exports; int8 quantizes the "
                "Attention layout only"
            )


@dataclass(frozen=True)
class Reference:
    """The source's own vectors for the parity and canary texts, computed once per source."""

    parity: np.ndarray
    canary: np.ndarray

    @classmethod
    def of(cls, source: Source) -> Reference:
        options = EmbedOptions()
        return cls(
            parity=reference_embed(source.model, builtin_texts(), options),
            canary=reference_embed(source.model, canary_texts(), options),
        )


def export_model(
    src: str,
    out: str | Path,
    dtype: str = "fp32",
    optimize: bool = True,
    trust_remote_code: bool = False,
    force: bool = False,
    attention: str | None = None,
    weight_bits: int | None = None,
) -> ModelCard:
    """attention: the layout (export/optimize.py); None: packed-mha for fp16, else attention.
    weight_bits: int8's weights in 8 bits (None, the default) or 7 (CPUs without VNNI)."""
    plan = Plan(dtype, optimize, attention or default_layout(dtype, optimize), weight_bits)
    plan.check()
    out = Path(out)
    _check_out(out, force)
    source = load_source(src, trust_remote_code)
    with _work_dir(out, "trace") as work:
        graph = _trace(source, work)
        return _write(source, graph, plan, out, Reference.of(source))


def export_layouts(
    src: str,
    outs: dict[str, Path],
    dtype: str = "fp16",
    force: bool = False,
    keep_going: bool = False,
) -> dict[str, ModelCard | ExportError]:
    """One export per attention layout (outs: layout -> directory), traced once. keep_going:
    a layout that fails (its parity, say) is returned as its error and the others still built."""
    plans = {layout: Plan(dtype, True, layout) for layout in outs}
    for out, plan in zip(outs.values(), plans.values(), strict=True):
        plan.check()
        _check_out(out, force)
    source = load_source(src)
    reference = Reference.of(source)
    first = next(iter(outs.values()))
    with _work_dir(first, "trace") as work:
        graph = _trace(source, work)
        cards: dict[str, ModelCard | ExportError] = {}
        for layout, out in outs.items():
            try:
                cards[layout] = _write(source, graph, plans[layout], out, reference)
            except ExportError as err:
                if not keep_going:
                    raise
                log.error("the %s layout failed: %s", layout, err)
                cards[layout] = err
        return cards


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty; pass --force to replace it")


@contextmanager
def _work_dir(out: Path, tag: str = "export") -> Iterator[Path]:
    """A hidden directory beside `out`, removed on the way out whatever happens."""
    path = out.parent / f".{out.name}.{tag}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _trace(source: Source, work: Path) -> Path:
    log.info("exporting %s to ONNX (opset %d)", source.source_id, OPSET)
    graph = work / "graph.onnx"
    export_graph(source.model[0].auto_model, source.pooling, graph)
    return graph


def _write(source: Source, graph: Path, plan: Plan, out: Path, ref: Reference) -> ModelCard:
    with _work_dir(out) as work:
        card = _build(source, graph, work, plan, ref)
        _replace_dir(work, out)
    return card


def _build(source: Source, graph: Path, work: Path, plan: Plan, ref: Reference) -> ModelCard:
    transformer = source.model[0].auto_model
    fused: dict[str, int] = {}
    if plan.optimize:
        log.info("fusing attention (%s layout), layer norm and GELU", plan.attention)
        fused = fuse(graph, work / "fused.onnx", transformer.config, plan.attention, plan.for_cpu)
        graph = work / "fused.onnx"
    _convert(graph, work / "converted.onnx", plan)
    if plan.attention in CUDA_ONLY_LAYOUTS:
        log.info("removing padding: %s", plan.attention)
        packed = pack(work / "converted.onnx", work / MODEL_FILE)
        fused = {k: n for k, n in fused.items() if not k.endswith("Attention")} | packed
    else:
        (work / "converted.onnx").rename(work / MODEL_FILE)
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
        dtype=plan.dtype,
        opset=OPSET,
        prompts=source.prompts,
        default_prompt_name=source.default_prompt_name,
        fused_operators=fused,
        versions=_versions(),
        attention=plan.attention,
        weight_bits=plan.int8_weight_bits,
        canary=_canary(ref),
    )
    write_atomic(work / CARD_FILE, card.to_json())
    return _with_parity(card, source, work, ref)


def _convert(graph: Path, dst: Path, plan: Plan) -> None:
    dtype = plan.dtype
    if plan.int8_weight_bits is not None:
        log.info("quantizing MatMul and Attention weights to int8 (%d bits)", plan.int8_weight_bits)
        quantize_int8(graph, dst, plan.int8_weight_bits)
    elif dtype == "fp16":
        log.info("converting the graph to fp16 (inputs, output and pooling stay as they are)")
        to_fp16(graph, dst)
    else:
        shutil.copyfile(graph, dst)


def _canary(ref: Reference) -> dict[str, Any]:
    vectors = ref.canary / np.linalg.norm(ref.canary, axis=1, keepdims=True)
    return {"texts": canary_texts(), "vectors": np.round(vectors, 7).tolist()}


def parity_device(card: ModelCard) -> str:
    """Where the export's parity is measured: fp16 and padding-free graphs are GPU formats,
    measured on the GPU where there is one. onnxruntime's CPU kernels run fp16 too (slowly),
    so a machine without a GPU still checks such an export; only the padding-free layouts have
    no CPU kernels at all."""
    if card.dtype == "fp16" or card.attention in CUDA_ONLY_LAYOUTS:
        return resolve_device("auto")
    return "cpu"


def _with_parity(card: ModelCard, source: Source, work: Path, ref: Reference) -> ModelCard:
    device = parity_device(card)
    if device == "cpu" and card.attention in CUDA_ONLY_LAYOUTS:
        log.warning(
            "parity of the %s layout not measured: it has no CPU kernels and this machine has "
            "no GPU; the canary checks it on the first GPU that loads it",
            card.attention,
        )
        parity = {"measured": False, "device": device, "reason": "no CPU kernels for this layout"}
        card = dataclasses.replace(card, parity=parity)
        write_atomic(work / CARD_FILE, card.to_json())
        return card
    log.info("measuring parity against sentence-transformers on the %s", device)
    embedder = Embedder.load(work, device=device, verify_checksum=False, canary=False)
    report = measure(embedder, source.model, builtin_texts(), THRESHOLDS[card.dtype], ref.parity)
    if not report.passed:
        raise ExportError(
            f"parity failed: min cosine {report.min_cosine:.6f} to sentence-transformers is "
            f"under {report.threshold} for {card.dtype}; the export was not written"
        )
    parity = {**report.as_dict(), "measured": True, "device": device}
    card = dataclasses.replace(card, parity=parity)
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
