"""Job configs: one YAML file per job in conf/, validated into typed, frozen models on load.

Unknown keys and bad values are errors that name the file, the key and what is allowed, so a
typo never runs silently with a default. Command-line overrides take the form `key.sub=value`
(the value read as YAML: `runtime.threads=4`, `embed.normalize=false`) and are checked the same
way. Paths in the config are relative to the directory the command runs in, which is what
`ray job submit --working-dir .` preserves.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    source: str  # local sentence-transformers dir, pkg:NAME or hub id
    dir: Path  # where the exported model directory lives
    dtype: Literal["fp32", "int8", "fp16"] = "fp32"
    optimize: bool = True
    trust_remote_code: bool = False


class EmbedConfig(_Section):
    normalize: bool = True
    prompt_name: str | None = None
    truncate: bool = True
    truncation_direction: Literal["left", "right"] = "right"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class RuntimeConfig(_Section):
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(default=None, ge=1)
    max_batch_tokens: int = Field(default=2048, ge=1)


class Config(_Section):
    model: ModelConfig
    embed: EmbedConfig = EmbedConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, embed, runtime)")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from err


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[leaf] = yaml.safe_load(value)


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        section = _section_at(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown key '{where}' (allowed here: {allowed})"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = (
            model.model_fields[str(part)].annotation if part in model.model_fields else None
        )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
