"""The `embedpipe` command. Parsing and printing live here; the work is elsewhere: `run` in
pipelines/batch/, `plan` in pipelines/plan/, `status` in pipelines/output/, `serve` in
pipelines/serve/, `embed` in workers/, `export` and `verify` in export/.

`export` and `verify` import the export package lazily: it needs PyTorch (the `export` extra),
which the runtime commands never do. Exit codes: 0 done, 1 failed (a failed task, a failed
parity, a rejected text), 2 a usage or config error, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines.charts import ChartsUnavailable
from pipelines.config import Config, ConfigError, ServeJob, load_config
from pipelines.help_texts import COMMANDS, FIRST_STEPS, TOOL
from pipelines.import_hints import import_hint
from workers import EmbedOptions, OptionError
from workers.errors import DeviceError
from workers.model_dir import ATTENTION_LAYOUTS, CARD_FILE, DTYPES, ModelDirError, read_card
from workers.openvino_session import RUNTIMES

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as err:  # a usage or config error: 2, as for `run`
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    except (ModelDirError, OptionError, DeviceError, ValueError) as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 1
    except ChartsUnavailable as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"embedpipe: error: {import_hint(err)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (`| head`) went away: not an error of ours, and nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # argparse cannot take positionals after options with nargs='*' ("embed DIR --no-truncate
    # TEXT"), so the texts that follow options come back as extras and are appended here.
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "embed" and not any(x.startswith("-") for x in extra):
        args.args += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedpipe",
        description=TOOL,
        epilog=FIRST_STEPS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(_command(commands, "run"))
    _add_plan(_command(commands, "plan"))
    _add_config(_command(commands, "config"))
    _add_status(_command(commands, "status"))
    _add_query(_command(commands, "query"))
    _add_serve(_command(commands, "serve"))
    _add_embed(_command(commands, "embed"))
    _add_export(_command(commands, "export"))
    _add_verify(_command(commands, "verify"))
    demo = _command(commands, "demo-corpus")
    demo.add_argument("out", type=Path)
    demo.add_argument("--limit", type=int, default=6000, help="rows at most")
    demo.set_defaults(handler=_demo)
    return parser


def _command(commands: Any, name: str) -> argparse.ArgumentParser:
    """A subcommand with its summary, description, examples and exit codes (help_texts.py)."""
    text = COMMANDS[name]
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=text.summary,
        description=textwrap.fill(text.description, 92),
        epilog=text.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(handler=_config)


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(handler=_run)


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job config (YAML), read as `run` reads it")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument(
        "--sample",
        type=int,
        default=10_000,
        help="distinct texts to tokenize (default 10000); 0 tokenizes every text (exact)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--tokens-per-s",
        type=float,
        help="one actor's model throughput; default: timed on the configured device here",
    )
    p.add_argument("--actors", type=int, help="actors the run will have (default: the config's)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the token-length histogram")
    p.set_defaults(handler=_plan)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job config (YAML): model, embedding and serve")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(handler=_serve)


def _add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="the output.path of a run (a directory or s3://bucket/prefix)")
    p.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw the run's report (as report.png)"
    )
    p.set_defaults(handler=_status)


def _add_query(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="the output.path of a run (a directory or s3://bucket/prefix)")
    p.add_argument("text", help="the query text")
    p.add_argument("-k", type=int, default=10, help="how many rows (default 10)")
    p.add_argument("--prompt-name", help="the model's prompt for the query (e.g. query)")
    p.add_argument("--model", type=Path, help="model directory (default: the run's config)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {id, score, ...}")
    p.set_defaults(handler=_query)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="local sentence-transformers dir, pkg:NAME or hub id")
    p.add_argument("--out", type=Path, help="model directory to write")
    p.add_argument("--dtype", choices=DTYPES, help="fp32 (default), fp16 (GPU), int8 (CPU)")
    p.add_argument(
        "--attention",
        choices=ATTENTION_LAYOUTS,
        help="attention layout: default packed-mha for fp16 (fastest on CUDA; packed* run on "
        "CUDA only), attention otherwise",
    )
    p.add_argument(
        "--weight-bits",
        type=int,
        choices=[8, 7],
        help="int8: weights in 8 bits (default) or 7, for CPUs without VNNI (AVX2 only), where "
        "onnxruntime's int8 kernel can saturate with 8",
    )
    p.add_argument("--no-optimize", action="store_true", help="skip onnxruntime's fusion")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--config", type=Path, help="take model, out and dtype from a job config")
    p.set_defaults(handler=_export)


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="exported model directory")
    p.add_argument("--reference", required=True, help="the source model to compare against")
    p.add_argument("--texts", type=Path, help="texts file: .txt lines, .jsonl or .parquet 'text'")
    p.add_argument("--min-cosine", type=float, help="threshold (default by dtype; fp32 0.9999)")
    p.add_argument("--threads", type=int)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(handler=_verify)


def _add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="[DIR] TEXT", help="model dir, then texts")
    p.add_argument("--config", type=Path, help="take the model dir and options from a config")
    p.add_argument("--no-normalize", dest="normalize", action="store_const", const=False)
    p.add_argument("--no-truncate", dest="truncate", action="store_const", const=False)
    p.add_argument("--truncation-direction", type=str.lower, choices=["left", "right"])
    p.add_argument("--prompt-name")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int)
    p.add_argument("--max-batch-tokens", type=int)
    p.add_argument("--runtime", choices=RUNTIMES)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. workers.cpus_per_actor=2 (with --config)",
    )
    p.set_defaults(handler=_embed)


def _export(args: argparse.Namespace) -> int:
    from export.exporter import export_model
    from export.source import ExportError

    src, out, dtype, attention = args.model, args.out, args.dtype, args.attention
    bits = args.weight_bits
    if args.config:
        model = load_config(args.config).model
        if (Path(model.source) / CARD_FILE).is_file():
            print(f"{model.source} is an exported model directory already; nothing to export")
            return 0
        src, out, dtype = src or model.source, out or model.export_dir(), dtype or model.dtype
        attention, bits = attention or model.attention, bits or model.weight_bits
        if not args.force and _is_current(out, src, dtype, attention, bits):
            print(f"{out} already holds the {dtype} export of {src}; --force re-exports it")
            return 0
    if not src or not out:
        raise ConfigError("export needs --model and --out (or --config)")
    try:
        card = export_model(
            src,
            out,
            dtype or "fp32",
            not args.no_optimize,
            args.trust_remote_code,
            args.force,
            attention=attention,
            weight_bits=bits,
        )
    except ExportError as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 1
    weights = f" ({card.weight_bits}-bit weights)" if card.weight_bits else ""
    print(
        f"wrote {out}: {card.dtype}{weights}, {card.attention} attention, dim {card.dim}, "
        f"{card.pooling} pooling, {_parity_words(card.parity)}"
    )
    return 0


def _parity_words(parity: dict) -> str:
    if not parity.get("measured", True):
        return f"parity not measured ({parity['reason']}): the canary checks it on a GPU"
    return (
        f"min cosine {parity['min_cosine']:.6f} to the reference over {parity['n_texts']} "
        f"texts on the {parity['device']}"
    )


def _is_current(
    out: Path, src: str, dtype: str, attention: str | None, weight_bits: int | None
) -> bool:
    try:
        card = read_card(out)
    except ModelDirError:
        return False
    same_layout = attention is None or card.attention == attention
    same_bits = weight_bits is None or card.int8_weight_bits == weight_bits
    return card.source == src and card.dtype == dtype and same_layout and same_bits


def _verify(args: argparse.Namespace) -> int:
    from export.source import ExportError
    from export.verify import verify

    try:
        report = verify(
            args.dir,
            args.reference,
            args.texts,
            args.min_cosine,
            args.threads,
            args.trust_remote_code,
        )
    except ExportError as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 1
    verdict = "ok" if report.passed else "FAILED"
    print(
        f"min cosine {report.min_cosine:.8f}, mean cosine {report.mean_cosine:.8f} over "
        f"{report.n_texts} texts against {report.reference} "
        f"(threshold {report.threshold}): {verdict}"
    )
    return 0 if report.passed else 1


def _embed(args: argparse.Namespace) -> int:
    from workers import Embedder

    config = load_config(args.config, args.set) if args.config else None
    if config is None and not args.args:
        raise ConfigError("embed needs a model directory (or --config)")
    model_dir = config.model.export_dir() if config else Path(args.args[0])
    texts = list(args.args if config else args.args[1:]) or _stdin_lines()
    embedder = Embedder.load(model_dir, parallel_batches=True, **_runtime(args, config))
    result = embedder.embed(texts, _options(args, config))
    rejected = [(i, e) for i, e in enumerate(result.errors) if e is not None]
    for i, reason in rejected:
        print(f"embedpipe: text {i + 1} rejected: {reason}", file=sys.stderr)
    if rejected:
        return 1
    json.dump(result.vectors.tolist(), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _stdin_lines() -> list[str]:
    return sys.stdin.read().splitlines()


def _options(args: argparse.Namespace, config: Config | None) -> EmbedOptions:
    base = config.embedding.options() if config else EmbedOptions()
    flags = {
        "normalize": args.normalize,
        "truncate": args.truncate,
        "truncation_direction": args.truncation_direction,
        "prompt_name": args.prompt_name,
    }
    return dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})


def _runtime(args: argparse.Namespace, config: Config | None) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if config:
        workers = config.workers
        base = {
            "device": workers.device,
            "threads": workers.cpus_per_actor,
            "max_batch_tokens": config.embedding.max_batch_tokens,
            "runtime": workers.runtime,
        }
    flags = {
        "device": args.device,
        "threads": args.threads,
        "max_batch_tokens": args.max_batch_tokens,
        "runtime": args.runtime,
    }
    return {**base, **{k: v for k, v in flags.items() if v is not None}}


def _run(args: argparse.Namespace) -> int:
    from pipelines.batch.cluster import ClusterError
    from pipelines.batch.run import run_job
    from pipelines.inputs.readers import InputError
    from pipelines.interrupt import Interrupted, exit_code
    from pipelines.output.state import StateError

    logging.getLogger("pipelines").setLevel(logging.INFO)
    logging.getLogger("embedpipe").setLevel(logging.INFO)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    try:
        report = run_job(config, release_ray=True)
    except (StateError, InputError, ModelDirError, ConfigError) as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    except ClusterError as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"embedpipe: {err} before any task ran; nothing was written")
        return exit_code(err.signum)
    _print_summary(report)
    if "interrupted" in report:
        return exit_code(signal.Signals[report["interrupted"]])
    return 0 if report["tasks_done"] == report["tasks_total"] else 1


def _print_summary(report: dict[str, Any]) -> None:
    unit = "chunks" if report.get("chunks_written") else "rows"  # what rows are, when chunked
    print(
        f"{report['tasks_done']}/{report['tasks_total']} tasks done, "
        f"{report['tasks_failed']} failed; {report['rows_embedded']:,} {unit} embedded, "
        f"{report['rows_from_cache']:,} from cache, {report['rows_deduplicated']:,} "
        f"deduplicated, {report['rows_rejected']:,} rejected, {report['tokens']:,} tokens "
        f"in {report['seconds']:.1f} s (start-up {report['seconds_startup']:.1f} s)"
    )
    if report.get("device_idle_share") is not None:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds_per_stage"].items())
        print(f"device idle {report['device_idle_share']:.0%} of the time; task stages: {stages}")
    if oom := report.get("device_oom", {}).get("splits"):
        lowest = report["device_oom"]["max_batch_tokens"]
        print(
            f"the device ran out of memory {oom} time(s): those batches ran again in halves, "
            f"and max_batch_tokens went down to {lowest} (set it there to start there)"
        )
    for task_id, reason in report["failures"].items():
        print(f"  failed {task_id}: {reason}")
    if "interrupted" in report:
        left = report["tasks_total"] - report["tasks_done"] - report["tasks_failed"]
        print(f"stopped by {report['interrupted']}: {left} task(s) left; run it again to resume")
    print(f"output: {report['output']}")


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import build_demo_corpus

    if args.out.is_dir() and any(args.out.iterdir()):
        print(f"{args.out} exists already; leaving it as it is")
        return 0
    rows = build_demo_corpus(args.out, args.limit)
    print(f"wrote {rows:,} stdlib docstrings to {args.out} as Parquet, JSONL and CSV shards")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pipelines.batch.cluster import connect
    from pipelines.batch.preflight import ensure_model
    from pipelines.serve.server import serve_until_stopped

    logging.getLogger("pipelines").setLevel(logging.INFO)
    config = load_config(args.config, args.overrides, ServeJob)
    model_dir = ensure_model(config)
    config.serve.tokens()  # an unreadable token file fails here, not in every replica
    if config.embedding.chunking is not None:
        log.warning(
            "embedding.chunking is a batch setting: the HTTP API truncates long texts (or "
            "rejects them under truncate: false), as the Inference API does"
        )
    connect()
    serve = config.serve
    print(f"serving {model_dir} at http://{serve.host}:{serve.port}/ (Ctrl-C stops)", flush=True)
    code = serve_until_stopped(config, model_dir)
    print("stopped", flush=True)
    return code


def _query(args: argparse.Namespace) -> int:
    from pipelines.output.search import open_output, search
    from pipelines.output.state import StateError
    from pipelines.storage.settings import StorageSettings

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    storage = StorageSettings.resolve()
    try:
        output = open_output(args.out, storage)
        embedder = _query_model(args, output.fingerprint, storage)
        options = EmbedOptions(**output.fingerprint["options"] | _prompt(args.prompt_name))
        layout = output.layout()
        found = embedder.embed([args.text], options)
        del embedder  # the scan needs only the vector: its memory goes back before it starts
        gc.collect()
        if found.errors[0] is not None:
            raise ConfigError(f"the query cannot be embedded: {found.errors[0]}")
        hits = search(output, layout.encode(found.vectors), args.k, storage)
    except (StateError, OSError) as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        rows = [{"id": h.id, "score": h.score, **(h.chunk or {}), **h.kept} for h in hits]
        print(json.dumps(rows))
        return 0
    for rank, hit in enumerate(hits, 1):
        kept = "  ".join(f"{k}={v}" for k, v in hit.kept.items())
        print(f"{rank:>3}  {hit.score:.4f}  {hit.id}{_chunk_label(hit.chunk)}  {kept}".rstrip())
    return 0


def _chunk_label(chunk: dict[str, int] | None) -> str:
    """`  chunk 3/7 chars 1200-2140`: the chunk (1-based here) and its characters."""
    if chunk is None:
        return ""
    return (
        f"  chunk {chunk['chunk'] + 1}/{chunk['n_chunks']} "
        f"chars {chunk['char_start']}-{chunk['char_end']}"
    )


def _prompt(name: str | None) -> dict[str, Any]:
    return {} if name is None else {"prompt_name": name}


def _query_model(args: argparse.Namespace, fingerprint: dict[str, Any], storage: Any) -> Any:
    """The model that made the output: --model, else the run's config; refused when its
    model.onnx is not the one the fingerprint names."""
    from pipelines.config import ModelConfig
    from pipelines.output.state import RunState
    from workers import Embedder

    model_dir = args.model
    if model_dir is None:
        text = RunState(args.out, storage).tree.read_text("_state/config.yaml")
        if text is None:
            raise ConfigError(f"{args.out} keeps no config: pass --model DIR")
        model_dir = ModelConfig(**yaml.safe_load(text)["model"]).export_dir()
    card = read_card(model_dir)
    wanted = fingerprint["model"]["onnx_sha256"]
    if card.onnx_sha256 != wanted:
        raise ConfigError(
            f"{model_dir} is not the model that made {args.out} (its model.onnx has sha256 "
            f"{card.onnx_sha256[:12]}, the output's {wanted[:12]}); pass --model with that one"
        )
    return Embedder.load(model_dir, threads=os.cpu_count())


def _plan(args: argparse.Namespace) -> int:
    from pipelines.inputs.readers import InputError
    from pipelines.output.state import StateError
    from pipelines.plan.command import PlanRequest, plan_job
    from pipelines.plan.show import plan_lines

    if args.sample < 0 or (args.actors is not None and args.actors < 1):
        raise ConfigError("--sample must be 0 or more, --actors 1 or more")
    config = load_config(args.config, args.overrides)
    request = PlanRequest(args.sample or None, args.tokens_per_s, args.actors)
    try:
        plan = plan_job(config, request)
    except (StateError, InputError, ModelDirError) as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    if args.plot:
        _plot_lengths(plan, args.plot)
    if args.json:
        print(json.dumps(plan.figures, indent=2))
    else:
        print("\n".join(plan_lines(plan.figures, str(args.config))))
    return 0


def _plot_lengths(plan: Any, path: Path) -> None:
    from pipelines.charts import token_lengths_png

    figures = plan.figures
    title = f"token lengths of {figures['sample']['texts']:,} sampled texts"
    # each sampled row stands for rows / sampled rows of the input
    weights = plan.rows * (figures["rows"] / max(figures["sample"]["rows"], 1))
    length = figures["tokens"]["max_seq_length"]
    path.write_bytes(token_lengths_png(plan.lengths, weights, length, title))
    print(f"wrote {path}", file=sys.stderr)


def _config(args: argparse.Namespace) -> int:
    from pipelines.batch.preflight import resolved_config

    print(resolved_config(load_config(args.config, args.overrides)), end="")
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipelines.output.state import StateError
    from pipelines.output.status import status_of
    from pipelines.storage.settings import StorageSettings

    try:
        text, figures = status_of(args.out, StorageSettings.resolve())
        print(text)
        if args.plot:
            from pipelines.charts import run_report_png

            args.plot.write_bytes(run_report_png(figures, f"embedpipe run: {args.out}"))
            print(f"wrote {args.plot}", file=sys.stderr)
    except (StateError, OSError) as err:
        print(f"embedpipe: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
