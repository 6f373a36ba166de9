"""Job configs: one YAML file per job in conf/, validated into typed, frozen models on load.

Unknown keys and bad values are errors that name the file, the key and what is allowed, so a
typo never runs silently with a default. Command-line overrides take the form `key.sub=value`
(the value read as YAML: `workers.num_actors=4`, `embedding.normalize=false`) and are checked
the same way. Paths in the config are relative to the directory the command runs in, which is what
`ray job submit --working-dir .` preserves.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.storage.settings import StorageSettings
from workers import EmbedOptions
from workers.chunking import Chunking
from workers.model_dir import CARD_FILE, AttentionLayout, Dtype


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    source: str  # hub id, sentence-transformers directory, pkg:NAME, or an exported model directory
    dir: Path | None = None  # where an export is kept; needed unless source is an exported dir
    dtype: Dtype = "fp32"
    # The attention layout of the export (export/optimize.py); unset: whatever the export in
    # model.dir holds, and when exporting packed-mha for fp16 (CUDA only), attention otherwise.
    attention: AttentionLayout | None = None
    # int8's weights: 8 bits, or 7 for CPUs without VNNI (AVX2 only), where onnxruntime's int8
    # kernel can saturate with 8; unset: whatever the export in model.dir holds, 8 when exporting.
    weight_bits: Literal[8, 7] | None = None
    optimize: bool = True
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _bits_for_int8(self) -> ModelConfig:
        if self.weight_bits is not None and self.dtype != "int8":
            raise ValueError(
                f"model.weight_bits is for int8 exports, and model.dtype is {self.dtype}; "
                "drop model.weight_bits or set model.dtype: int8"
            )
        return self

    def export_dir(self) -> Path:
        """The model directory to load: source itself when it is an export, else dir."""
        if (Path(self.source) / CARD_FILE).is_file():
            return Path(self.source)
        if self.dir is None:
            raise ConfigError(
                f"model.dir is not set and model.source {self.source!r} is not an exported "
                "model directory; set model.dir to where the export should be kept"
            )
        return self.dir


class InputConfig(_Section):
    path: str  # file, directory or glob
    id_column: str = "id"
    text_column: str = "text"
    keep_columns: list[str] = Field(default_factory=list)
    rows_per_task: int = Field(default=20000, ge=1)
    # A file of another kind under input.path (a README, a checksum file) is an error unless this
    # skips it with a warning.
    skip_unknown_files: bool = False


class OutputConfig(_Section):
    path: str  # a local directory or s3://bucket/prefix
    partition_by: list[str] = Field(default_factory=list)
    # The embedding column (output/layout.py): the first `dimensions` values (null: all), at
    # `precision`; binary packs 8 values a byte (int8 offset by 128; ubinary as uint8).
    dimensions: int | None = Field(default=None, ge=1)
    precision: Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"] = "float32"
    # int8/uint8: each dimension's range, from a file ({"min", "max"} JSON, a (2, d) .npy) or an
    # earlier output; else from this many texts embedded before the run (batch/calibration.py)
    calibration: str | None = None
    calibration_rows: int = Field(default=10_000, ge=1)
    # Part files: at most this many rows a file (a task then writes part-<task>-<k>.parquet;
    # null: one file per task and partition), rows per Parquet row group, and the codec.
    max_rows_per_file: int | None = Field(default=None, ge=1)
    row_group_rows: int | None = Field(default=None, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"


class OptionsConfig(_Section):
    """The per-text options (the Inference API's names): the defaults a request can override."""

    normalize: bool = True
    truncate: bool = True
    truncation_direction: Literal["left", "right"] = "right"
    prompt_name: str | None = None

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def options(self) -> EmbedOptions:
        return EmbedOptions(
            normalize=self.normalize,
            truncate=self.truncate,
            truncation_direction=self.truncation_direction,
            prompt_name=self.prompt_name,
        )


class ChunkingConfig(_Section):
    """embedding.chunking: long texts embedded as windows of `tokens` (with the special tokens
    and the prompt; default: the model's max_seq_length), neighbours sharing `overlap` tokens;
    `pool` none writes a row per chunk, mean a row per text (workers/chunking.py)."""

    tokens: int | None = Field(default=None, ge=2)
    overlap: int = Field(default=0, ge=0)
    pool: Literal["none", "mean"] = "none"

    @model_validator(mode="after")
    def _overlap_below_tokens(self) -> ChunkingConfig:
        if self.tokens is not None and self.overlap >= self.tokens:
            raise ValueError(
                f"embedding.chunking.overlap ({self.overlap}) must be below tokens ({self.tokens})"
            )
        return self

    def chunking(self, max_seq_length: int) -> Chunking:
        return Chunking(self.tokens or max_seq_length, self.overlap, self.pool)


class EmbeddingConfig(OptionsConfig):
    max_batch_tokens: int = Field(default=16384, ge=1)
    # null: a text longer than the model's window is truncated (or rejected), as by the API
    chunking: ChunkingConfig | None = None

    def chunked(self, max_seq_length: int) -> Chunking | None:
        return None if self.chunking is None else self.chunking.chunking(max_seq_length)


class WorkersConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_actors: int | Literal["auto"] = Field(default="auto")
    cpus_per_actor: int = Field(default=2, ge=1)
    # What runs the model on the CPU: onnxruntime, or OpenVINO for an fp32 export (the extra
    # embedpipe[openvino]): openvino gives the same vectors to fp32 rounding, openvino-bf16
    # computes in bfloat16 (AMX / AVX512-BF16 CPUs) for speed (workers/openvino_session.py).
    runtime: Literal["onnxruntime", "openvino", "openvino-bf16"] = "onnxruntime"

    @field_validator("num_actors")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or at least 1")
        return value

    def device_for(self, gpus: int) -> str:
        """cpu or cuda: workers.device, where auto is cuda when there are GPUs for the actors
        and the runtime can use them (OpenVINO's run on CPUs only)."""
        if self.device != "auto":
            return self.device
        return "cuda" if gpus > 0 and self.runtime == "onnxruntime" else "cpu"

    @model_validator(mode="after")
    def _openvino_on_cpu(self) -> WorkersConfig:
        if self.runtime != "onnxruntime" and self.device == "cuda":
            raise ValueError(
                f"workers.runtime {self.runtime} runs on the CPU only; set workers.device: cpu, "
                "or workers.runtime: onnxruntime for the GPU"
            )
        return self


class RunConfig(_Section):
    max_retries: int = Field(default=3, ge=0)
    wait_for_model: bool = True
    wait_timeout_s: float = Field(default=600, gt=0)
    stop_grace_s: float = Field(default=10, ge=0)  # SIGINT/SIGTERM: time to finish running tasks
    # The batch x-use-cache: copy the vectors of texts an earlier output (cache_from: output
    # directories, part files or globs) already holds for the same model and options, and embed
    # each distinct text of the run once. false embeds every row, as the API's header does.
    use_cache: bool = True
    cache_from: list[str] = Field(default_factory=list)
    # A task whose repeated texts an earlier, still running task embeds: false (the default)
    # starts it anyway when no other task is ready, and it embeds those texts itself, so actors
    # never idle (a text can then be embedded once per task running beside its first one);
    # true holds it back until that task is settled, so each distinct text is embedded exactly
    # once, at the cost of actors idling where repeats chain the tasks one after another.
    wait_for_copies: bool = False


class StorageConfig(_Section):
    """Object stores (s3://): these win over AWS_ENDPOINT_URL and AWS_DEFAULT_REGION; the
    credentials come from the environment only (pipelines/storage/settings.py)."""

    endpoint_url: str | None = None  # e.g. http://minio:9000
    region: str | None = None
    allow_http: bool | None = None  # default: true when endpoint_url is http://
    anonymous: bool = False  # public buckets, unsigned requests
    # An object-store output's lock is a lease renewed while the run lives: a killed run's
    # lock is taken over this long after its last renewal.
    lock_lease_s: float = Field(default=60, ge=2)

    def settings(self) -> StorageSettings:
        return StorageSettings.resolve(
            self.endpoint_url, self.region, self.allow_http, self.anonymous, self.lock_lease_s
        )


class ServeConfig(_Section):
    """`embedpipe serve`: the HTTP endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_tokens: list[str] | Path = Field(default_factory=list)  # tokens, or a file of them
    max_inputs: int = Field(default=1024, ge=1)  # texts in one request
    max_body_bytes: int = Field(default=10_000_000, ge=1)
    max_batch_tokens: int = Field(default=16384, ge=1)  # padded tokens per model batch
    max_batch_requests: int = Field(default=64, ge=1)  # requests Ray Serve gathers per batch
    batch_wait_s: float = Field(default=0.005, ge=0)  # how long a batch waits for more
    replicas: int = Field(default=1, ge=1)
    cache_entries: int = Field(default=100_000, ge=0)  # x-use-cache LRU size; 0 turns it off
    wait_timeout_s: float = Field(default=600, gt=0)  # x-wait-for-model: true waits this long
    # Embedding requests a replica holds (queued or computing) before it answers 429 with
    # Retry-After, at once, rather than let every client's latency grow without bound.
    max_queue: int = Field(default=128, ge=1)
    # The model's name in answers (/info, the OpenAI route's "model", errors); default: the
    # model.source's hub id or package, or the last part of a local path (never the path).
    model_id: str | None = None
    # POST /v1/embeddings: OpenAI's API has no options, so these are its texts' options; the
    # defaults are TEI's for that route (normalized, truncated on the right, no prompt).
    openai: OptionsConfig = OptionsConfig()

    def tokens(self) -> frozenset[str]:
        """The accepted bearer tokens; empty: no authentication."""
        if isinstance(self.api_tokens, Path):
            try:
                lines = self.api_tokens.read_text().splitlines()
            except OSError as err:
                raise ConfigError(
                    f"serve.api_tokens: cannot read {self.api_tokens}: {err}"
                ) from err
            return frozenset(t.strip() for t in lines if t.strip() and not t.startswith("#"))
        return frozenset(self.api_tokens)


class Config(_Section):
    model: ModelConfig
    input: InputConfig
    output: OutputConfig
    embedding: EmbeddingConfig = EmbeddingConfig()
    workers: WorkersConfig = WorkersConfig()
    run: RunConfig = RunConfig()
    serve: ServeConfig = ServeConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _runtime_fits(self) -> Config:
        check_runtime(self.model, self.workers)
        return self

    @model_validator(mode="after")
    def _partitions_are_kept_columns(self) -> Config:
        if missing := [c for c in self.output.partition_by if c not in self.input.keep_columns]:
            raise ValueError(
                f"output.partition_by names {', '.join(missing)}, which input.keep_columns "
                f"does not keep ({self.input.keep_columns}); partitions are by kept columns"
            )
        return self


class ServeJob(_Section):
    """What `embedpipe serve` reads: the model, its options, the workers and the server. A
    batch job's sections may be there too (one file for both commands); they are checked, not
    needed."""

    model: ModelConfig
    embedding: EmbeddingConfig = EmbeddingConfig()
    workers: WorkersConfig = WorkersConfig()
    serve: ServeConfig = ServeConfig()
    storage: StorageConfig = StorageConfig()
    input: InputConfig | None = None
    output: OutputConfig | None = None
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _runtime_fits(self) -> ServeJob:
        check_runtime(self.model, self.workers)
        return self


def check_runtime(model: ModelConfig, workers: WorkersConfig) -> None:
    """OpenVINO's runtimes run fp32 exports (openvino-bf16 computes one in bfloat16)."""
    if workers.runtime != "onnxruntime" and model.dtype != "fp32":
        raise ValueError(
            f"workers.runtime {workers.runtime} runs fp32 exports, and model.dtype is "
            f"{model.dtype}; set model.dtype: fp32 (openvino-bf16 for bfloat16 speed), or "
            "workers.runtime: onnxruntime"
        )


def served_model_id(model: ModelConfig, serve: ServeConfig) -> str:
    """The served model's name: serve.model_id, else model.source unless it is a local path
    (answers never name the server's files), then the path's last part."""
    if serve.model_id:
        return serve.model_id
    source = model.source
    if Path(source).is_absolute() or source.startswith((".", "~")) or Path(source).exists():
        return Path(source).expanduser().resolve().name or "model"
    return source


Job = TypeVar("Job", Config, ServeJob)


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    schema: type[Job] = Config,  # type: ignore[assignment]
) -> Job:
    """The config in `path` with `overrides` applied, validated as `schema` (a batch job, or
    ServeJob for `embedpipe serve`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        sections = ", ".join(schema.model_fields)
        raise ConfigError(f"{path} must hold a mapping of sections: {sections}")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e, schema) for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from err


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        if node.get(part) is None:  # `chunking: null` in the file: a key set here turns it on
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[leaf] = yaml.safe_load(value)


def _describe(error: Any, schema: type[BaseModel]) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        section = _section_at(error["loc"][:-1], schema)
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown key '{where}' (allowed here: {allowed})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not where:  # a check across sections: its message names the keys, and the input is all
        return message
    return f"{where}: {message} (got {error.get('input')!r})"


def _section_at(loc: tuple[Any, ...], schema: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] = schema
    for part in loc:
        field = model.model_fields.get(str(part))
        # an optional section (ServeJob's input) is a union with None: its model is the section
        kinds = get_args(field.annotation) or (field.annotation,) if field else ()
        sections = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if not sections:
            return None
        model = sections[0]
    return model
