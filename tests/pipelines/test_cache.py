"""use_cache end to end on a local Ray: a re-index embeds only what changed, copies the rest, and
equals a full recompute byte for byte; an output of other options or another model is never
used; a text that repeats is embedded once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.cli import main
from pipelines.config import load_config
from workers import Embedder

DOCS = 200
SHARDS = 4


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def distinct_texts(parity_texts) -> list[str]:
    texts = list(dict.fromkeys(t for t in parity_texts if len(t) < 300))
    assert len(texts) >= DOCS + 20
    return texts


def write_corpus(root: Path, docs: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // SHARDS)
    for k in range(SHARDS):
        rows = docs[k * per : (k + 1) * per]
        frame = pl.DataFrame({"id": [i for i, _ in rows], "text": [t for _, t in rows]})
        frame.write_parquet(root / f"shard-{k}.parquet")
    return root


def run(tmp_path: Path, model: Path, corpus: Path, out: str, *overrides: str) -> dict:
    conf = tmp_path / f"{out}.yaml"
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 20}}\n"
        f"output: {{path: {tmp_path / out}}}\n"
        "embedding: {max_batch_tokens: 2048}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
    )
    report: dict = run_job(load_config(conf, list(overrides)))
    assert report["tasks_done"] == report["tasks_total"]
    return report


def part_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_a_reindex_embeds_only_changed_and_added_texts_and_equals_a_full_recompute(
    tmp_path, minilm_dir, distinct_texts
):
    week1 = [(f"doc-{i:03d}", distinct_texts[i]) for i in range(DOCS)]
    run(tmp_path, minilm_dir, write_corpus(tmp_path / "week1", week1), "out1")

    removed = set(range(0, DOCS, 20))  # 5%
    changed = set(range(5, DOCS, 10))  # 10%
    week2 = [
        (key, text + " (revised)" if i in changed else text)
        for i, (key, text) in enumerate(week1)
        if i not in removed
    ]
    added = [(f"new-{j:02d}", distinct_texts[DOCS + j]) for j in range(DOCS // 20)]  # 5%
    corpus2 = write_corpus(tmp_path / "week2", week2 + added)

    cached = run(tmp_path, minilm_dir, corpus2, "cached", f"run.cache_from=[{tmp_path / 'out1'}]")
    assert cached["rows_embedded"] == len(changed) + len(added) == 30
    assert cached["rows_from_cache"] == len(week2) - len(changed) == 170
    assert cached["rows_deduplicated"] == 0
    assert cached["cache"]["sources"][0]["rows"] == DOCS

    full = run(tmp_path, minilm_dir, corpus2, "full", "run.use_cache=false")
    assert full["rows_embedded"] == len(week2) + len(added)
    recomputed, copied = part_files(tmp_path / "full"), part_files(tmp_path / "cached")
    assert len(copied) == full["tasks_total"] == 12  # 4 shards of 50 rows, tasks of 20
    assert copied == recomputed  # same rows, same vectors, same bytes


@pytest.mark.parametrize(
    "made_with",
    ["embedding.truncation_direction=left", "embedding.normalize=false", "another model"],
)
def test_an_output_of_other_options_or_another_model_is_not_used(
    tmp_path, minilm_dir, minilm_int8_dir, distinct_texts, made_with
):
    corpus = write_corpus(tmp_path / "in", [(f"d{i}", distinct_texts[i]) for i in range(40)])
    if made_with == "another model":
        run(tmp_path, minilm_int8_dir, corpus, "old", "model.dtype=int8")
    else:
        run(tmp_path, minilm_dir, corpus, "old", made_with)
    report = run(tmp_path, minilm_dir, corpus, "new", f"run.cache_from=[{tmp_path / 'old'}]")
    assert report["rows_from_cache"] == 0 and report["rows_embedded"] == 40
    (source,) = report["cache"]["sources"]
    assert source["files"] == 0
    (reason,) = source["skipped"].values()
    key = made_with.split("=")[0].removeprefix("embedding.")
    expected = "model.onnx_sha256" if made_with == "another model" else f"options.{key}"
    assert reason.startswith("made with another model or options") and expected in reason


def test_repeated_texts_within_and_across_shards_are_embedded_once(
    tmp_path, minilm_dir, distinct_texts
):
    # 20 distinct texts over 120 rows: each text 6 times, in several shards and tasks; each
    # task waits for the running ones that embed its texts (by default it would start beside
    # them, and embed those texts again rather than idle)
    docs = [(f"d{i:03d}", distinct_texts[(i * 7) % 20]) for i in range(120)]
    corpus = write_corpus(tmp_path / "in", docs)
    report = run(tmp_path, minilm_dir, corpus, "out", "run.wait_for_copies=true")
    assert report["rows_embedded"] == 20
    assert report["rows_deduplicated"] == 100 and report["rows_rejected"] == 0
    parts = pl.read_parquet(tmp_path / "out" / "part-*.parquet").sort("id")
    assert parts["id"].to_list() == [key for key, _ in docs]
    texts = dict(docs)
    expected = Embedder.load(minilm_dir).embed([texts[k] for k in parts["id"]]).vectors
    assert np.stack(parts["embedding"].to_numpy()).tobytes() == expected.tobytes()
    digest = [hashlib.blake2b(texts[k].encode(), digest_size=16).digest() for k in parts["id"]]
    assert [bytes(h) for h in parts["text_hash"]] == digest
    # the vectors the tasks handed one another were state, gone once the run succeeded
    assert not list((tmp_path / "out" / "_state" / "shares").glob("*"))


def test_a_task_redone_later_copies_from_the_part_files_of_tasks_done_before(
    tmp_path, minilm_dir, distinct_texts
):
    docs = [(f"d{i:03d}", distinct_texts[(i * 7) % 20]) for i in range(120)]
    corpus = write_corpus(tmp_path / "in", docs)
    run(tmp_path, minilm_dir, corpus, "out")
    out = tmp_path / "out"
    first = part_files(out)
    # the last task's part file is gone: only it is redone, after every task that owns its texts
    last = sorted(first)[-1]
    (out / last).unlink()
    run(tmp_path, minilm_dir, corpus, "out")
    task_id = last.removeprefix("part-").removesuffix(".parquet")
    marker = json.loads((out / "_state" / "done" / f"{task_id}.json").read_text())
    assert marker["embedded"] == 0 and marker["deduplicated"] == marker["rows"] > 0
    assert part_files(out) == first


def test_cache_from_inside_the_output_is_refused_before_anything_is_written(
    tmp_path, minilm_dir, distinct_texts, capsys
):
    corpus = write_corpus(tmp_path / "in", [(f"d{i}", distinct_texts[i]) for i in range(8)])
    conf = tmp_path / "c.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\ninput: {{path: {corpus}}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
    )
    assert main(["run", str(conf), f"run.cache_from=[{tmp_path / 'out'}]"]) == 2
    assert "inside this run's output.path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
