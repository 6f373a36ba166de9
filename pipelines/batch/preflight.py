"""Pre-flight: everything the driver decides before any actor starts: the model directory
(exported on first use), the paths, the input listing and tasks, and the run's fingerprint
(output/fingerprint.py). A mistake found here costs no Ray start and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.batch.calibration import ranges_from, with_ranges
from pipelines.batch.task import TaskSpec
from pipelines.config import Config, ConfigError, InputConfig, ServeJob
from pipelines.inputs.listing import (
    glob_root,
    is_skipped,
    is_skipped_key,
    list_inputs,
    remote_root,
)
from pipelines.inputs.planning import Task, plan_tasks, require_columns
from pipelines.inputs.readers import InputError, InputFile
from pipelines.output.file_sizing import FileSizing
from pipelines.output.fingerprint import build_fingerprint
from pipelines.output.layout import QUANTIZED, Layout, LayoutError, Ranges
from pipelines.storage.settings import StorageSettings
from pipelines.storage.stores import is_remote, scheme_of
from workers.model_dir import (
    CARD_FILE,
    TOKENIZER_FILE,
    ModelCard,
    ModelDirError,
    check_files,
    read_card,
)
from workers.options import OptionError, prompt_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    config: Config
    model_dir: Path
    card: ModelCard
    files: list[InputFile]
    tasks: list[Task]
    fingerprint: dict[str, Any]
    prompt: str = ""  # the model's prompt for the configured prompt_name
    storage: StorageSettings = field(default_factory=StorageSettings)
    layout: Layout | None = None  # the embedding column; None: the model's float32

    def with_ranges(self, ranges: Ranges) -> Job:
        """This job once its int8/uint8 ranges are known (calibration.py): the layout and the
        fingerprint hold them."""
        assert self.layout is not None
        layout = with_ranges(self.layout, ranges)
        fingerprint = build_fingerprint(self.config, self.card, self.files, layout)
        return dataclasses.replace(self, layout=layout, fingerprint=fingerprint)

    def spec(self, task: Task) -> TaskSpec:
        inp, out = self.config.input, self.config.output
        return TaskSpec(
            task=task,
            out=str(out.path),
            id_column=inp.id_column,
            text_column=inp.text_column,
            keep_columns=tuple(inp.keep_columns),
            partition_by=tuple(out.partition_by),
            options=self.config.embedding.options(),
            fingerprint=json.dumps(self.fingerprint, sort_keys=True),
            prompt=self.prompt,
            use_cache=self.config.run.use_cache,
            storage=self.storage,
            layout=self.layout,
            sizing=FileSizing.of(self.config.output),
            chunking=self.config.embedding.chunked(self.card.max_seq_length),
        )


def prepare(config: Config) -> Job:
    inp = config.input
    check_paths(inp.path, config.output.path)
    check_cache_paths(config.run.cache_from, config.output.path)
    model_dir = ensure_model(config)
    card = read_card(model_dir)
    storage = config.storage.settings()
    # CSV and compressed shards are counted on the cluster once the lock is held (counting.py)
    listed = list_inputs(inp.path, inp.skip_unknown_files, storage, count=False)
    files = require_columns(listed, required_columns(inp), inp.text_column)
    tasks = plan_tasks(files, inp.rows_per_task)
    try:
        prompt = prompt_for(card, config.embedding.options())
    except OptionError as err:
        raise ConfigError(f"embedding.prompt_name: {err}") from err
    check_chunking(config, model_dir, card)
    layout = layout_of(config, card, storage)
    fingerprint = build_fingerprint(config, card, files, layout)
    return Job(config, model_dir, card, files, tasks, fingerprint, prompt, storage, layout)


def check_chunking(config: Config, model_dir: Path, card: ModelCard) -> None:
    """embedding.chunking leaves room for text beside the special tokens and the prompt, and
    fits the model: checked with the model's tokenizer before any actor starts."""
    chunking = config.embedding.chunked(card.max_seq_length)
    if chunking is None:
        return
    from workers.chunker import Chunker  # the tokenizer, only for a chunked run
    from workers.prepare import TextPreparer

    preparer = TextPreparer.from_file(model_dir / TOKENIZER_FILE, card)
    try:
        Chunker(preparer, card.max_seq_length, chunking, config.embedding.options())
    except OptionError as err:
        raise ConfigError(str(err)) from err


def layout_of(config: Config, card: ModelCard, storage: StorageSettings) -> Layout:
    """The output's layout, checked against the model, with output.calibration's ranges where
    given: a ConfigError naming the key if not."""
    out = config.output
    quantized = out.precision in QUANTIZED
    ranges = ranges_from(out.calibration, storage) if quantized and out.calibration else None
    try:
        return Layout.of(
            card.dim, out.dimensions, out.precision, config.embedding.normalize, ranges
        )
    except LayoutError as err:
        raise ConfigError(str(err)) from err


def required_columns(inp: InputConfig) -> dict[str, str]:
    """Each column the config names -> the key that names it, for the error that says which."""
    keys = {inp.id_column: "input.id_column", inp.text_column: "input.text_column"}
    for column in inp.keep_columns:
        keys.setdefault(column, "input.keep_columns")
    return keys


def check_paths(input_path: str, output_path: str | Path) -> None:
    """Refuses an output the input listing would find (a rerun would embed its own part files)
    and an input inside the output. A glob is judged by the directory it starts from; a local
    path never overlaps an object-store one."""
    output_path = str(output_path)
    if scheme_of(output_path) in ("gs", "az"):
        raise InputError(
            f"output.path {output_path}: an output on gs:// or az:// is not supported yet (the "
            "run lock needs S3's conditional writes); write to s3:// or a local directory"
        )
    if is_remote(input_path) or is_remote(output_path):
        _check_remote_paths(input_path, output_path)
        return
    out = Path(output_path).resolve()
    root = path_root(input_path)
    if root.is_relative_to(out):
        raise InputError(
            f"input.path {input_path!r} is inside output.path {output_path}: the run would "
            "read what it writes. Set output.path to a directory outside the input"
        )
    inside = root.is_dir() and out.is_relative_to(root)
    if inside and not is_skipped(out, root):
        raise InputError(
            f"output.path {output_path} is inside input.path {input_path!r}: a rerun would read "
            "its own part files as input. Set output.path outside the input (or under a "
            "directory whose name starts with '_', which the input listing skips)"
        )


def _check_remote_paths(input_path: str, output_path: str) -> None:
    root, out = remote_root(input_path).rstrip("/"), output_path.rstrip("/")
    if _within(root, out):
        raise InputError(
            f"input.path {input_path!r} is inside output.path {output_path}: the run would "
            "read what it writes. Set output.path to a prefix outside the input"
        )
    if _within(out, root) and not is_skipped_key(out[len(root) :].lstrip("/")):
        raise InputError(
            f"output.path {output_path} is inside input.path {input_path!r}: a rerun would read "
            "its own part files as input. Set output.path outside the input (or under a "
            "prefix whose name starts with '_', which the input listing skips)"
        )


def _within(location: str, root: str) -> bool:
    return location == root or location.startswith(root + "/")


def check_cache_paths(paths: list[str], output_path: str | Path) -> None:
    """Refuses a run.cache_from inside this run's own output."""
    output_path = str(output_path)
    for path in paths:
        if is_remote(path) != is_remote(output_path):
            continue
        if is_remote(path):
            inside = _within(remote_root(path).rstrip("/"), output_path.rstrip("/"))
        else:
            inside = path_root(path).is_relative_to(Path(output_path).resolve())
        if inside:
            raise InputError(
                f"run.cache_from names {path}, inside this run's output.path {output_path}: a "
                "rerun keeps its own finished tasks already. Remove it from run.cache_from"
            )


def path_root(path: str) -> Path:
    return glob_root(path).resolve()


def ensure_model(config: Config | ServeJob) -> Path:
    """The model directory; exported from model.source on first use when it is missing."""
    model = config.model
    model_dir = model.export_dir()
    try:
        card = read_card(model_dir)
    except ModelDirError:
        if (model_dir / CARD_FILE).exists():
            raise
        log.info("no export at %s yet: exporting %s (%s)", model_dir, model.source, model.dtype)
        from export.exporter import export_model  # needs the export extra, only now

        export_model(
            model.source,
            model_dir,
            model.dtype,
            model.optimize,
            model.trust_remote_code,
            attention=model.attention,
            weight_bits=model.weight_bits,
        )
        return model_dir
    if card.dtype != model.dtype:
        raise ModelDirError(
            f"{model_dir} holds the {card.dtype} export, but model.dtype is {model.dtype}; "
            "point model.dir elsewhere or set model.dtype to match"
        )
    if model.attention is not None and card.attention != model.attention:
        raise ModelDirError(
            f"{model_dir} holds the {card.attention} attention layout but model.attention is "
            f"{model.attention}; point model.dir elsewhere or re-export with --attention"
        )
    if model.weight_bits is not None and card.int8_weight_bits != model.weight_bits:
        raise ModelDirError(
            f"{model_dir} holds an int8 export with {card.int8_weight_bits}-bit weights but "
            f"model.weight_bits is {model.weight_bits}; point model.dir elsewhere or re-export "
            "with --weight-bits"
        )
    # Hashed once here, so a changed model.onnx is a usage error before Ray starts rather than
    # every actor failing to load.
    check_files(model_dir, card)
    return model_dir


def resolved_config(config: Config) -> str:
    """The config as this run resolved it (overrides applied), for OUT/_state/config.yaml."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
