"""The model directory: the contract between `export/` (writes it) and `workers/` (reads it).

One directory per model variant holds `model.onnx` (inputs GRAPH_INPUTS, output GRAPH_OUTPUT,
pooled but not normalized), `tokenizer.json` (padding and truncation off) and
`embedpipe-model.json`, the card below. The card is the only place the workers learn the
dimension, pooling, max length and prompts from, so it is validated strictly on read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from workers.files import sha256_file

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "embedpipe-model.json"
CARD_FORMAT = 1
# model.onnx's tensor names; the inputs in the order the graph takes them (export/graph.py).
GRAPH_INPUTS = ("input_ids", "attention_mask")
GRAPH_OUTPUT = "sentence_embedding"
Dtype = Literal["fp32", "fp16", "int8"]
DTYPES: tuple[str, ...] = get_args(Dtype)
# How attention is laid out in model.onnx (export/optimize.py); cards written before the key
# existed hold the fused Attention op.
AttentionLayout = Literal["attention", "mha", "packed", "packed-mha"]
ATTENTION_LAYOUTS: tuple[str, ...] = get_args(AttentionLayout)
# Padding-free graphs: onnxruntime has no CPU kernels for RemovePadding and packed attention.
CUDA_ONLY_LAYOUTS = ("packed", "packed-mha")


class ModelDirError(ValueError):
    """A model directory that is missing a file or whose card is malformed."""


@dataclass(frozen=True)
class ModelCard:
    source: str
    revision: str | None
    onnx_sha256: str
    dim: int
    pooling: str
    max_seq_length: int
    dtype: str
    opset: int
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    fused_operators: dict[str, int] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    attention: str = "attention"
    # int8 only: its weights' bits, 8 or 7 (export/optimize.py WEIGHT_BITS); None for float dtypes
    # and int8 exports made before it was recorded (8).
    weight_bits: int | None = None
    # Probe texts and their reference vectors (unit length), embedded again on every device
    # that loads the model: workers/canary.py.
    canary: dict[str, Any] = field(default_factory=dict)
    format: int = CARD_FORMAT

    @property
    def int8_weight_bits(self) -> int | None:
        """An int8 export's weight bits, 8 where its card predates the key; None for floats."""
        return (self.weight_bits or 8) if self.dtype == "int8" else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def read_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ModelDirError(
            f"{path} not found: {model_dir} is not an exported model directory. "
            "Create one with `embedpipe export --model SRC --out DIR`"
        ) from err
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{path} is not valid JSON: {err}") from err
    return _card_from_dict(raw, path)


def _card_from_dict(raw: object, path: Path) -> ModelCard:
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path} must hold a JSON object")
    known = {f.name for f in dataclasses.fields(ModelCard)}
    required = {f.name for f in dataclasses.fields(ModelCard) if _is_required(f)}
    if missing := sorted(required - raw.keys()):
        raise ModelDirError(f"{path} lacks key(s) {', '.join(missing)}: re-export the model")
    if raw.get("format", CARD_FORMAT) != CARD_FORMAT:
        raise ModelDirError(
            f"{path} has card format {raw['format']}, this embedpipe reads {CARD_FORMAT}"
        )
    card = ModelCard(**{k: v for k, v in raw.items() if k in known})
    if card.dtype not in DTYPES:
        raise ModelDirError(f"{path}: dtype {card.dtype!r} is not one of {', '.join(DTYPES)}")
    if card.attention not in ATTENTION_LAYOUTS:
        raise ModelDirError(
            f"{path}: attention {card.attention!r} is not one of {', '.join(ATTENTION_LAYOUTS)}"
        )
    if card.default_prompt_name is not None and card.default_prompt_name not in card.prompts:
        raise ModelDirError(
            f"{path}: default_prompt_name {card.default_prompt_name!r} is not among the prompts"
        )
    return card


def _is_required(f: dataclasses.Field[Any]) -> bool:
    no_default = f.default is dataclasses.MISSING
    return no_default and f.default_factory is dataclasses.MISSING


def check_files(model_dir: str | Path, card: ModelCard, verify_checksum: bool = True) -> None:
    """Refuses a directory whose files are missing or whose model.onnx is not the carded one."""
    root = Path(model_dir)
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (root / name).is_file():
            raise ModelDirError(f"{root / name} is missing: re-export the model into {root}")
    if verify_checksum and sha256_file(root / MODEL_FILE) != card.onnx_sha256:
        raise ModelDirError(
            f"{root / MODEL_FILE} does not match the sha256 in {root / CARD_FILE}: "
            "the file was changed or half-copied; re-export or re-copy the directory"
        )
