"""A run's report on a local Ray: report.json's figures and `_state/report.png` from the
markers, `embedpipe status` with the same figures, and `plan` over a finished output: it
finds what run.cache_from holds, as the run then copies it, and writes nothing there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.output.run_figures import TOKEN_BINS

pytestmark = pytest.mark.usefixtures("local_ray")

DOCS = 120


def write_conf(tmp_path: Path, model: Path, corpus: Path, out: Path, name: str) -> Path:
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 30}}\n"
        f"output: {{path: {out}}}\n"
        "embedding: {max_batch_tokens: 2048}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
    )
    return conf


@pytest.fixture(scope="module")
def finished(tmp_path_factory, minilm_dir, parity_texts) -> dict:
    root = tmp_path_factory.mktemp("report")
    texts = [t for t in parity_texts if len(t) < 400][:DOCS]
    corpus = root / "week1"
    corpus.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(DOCS)], "text": texts}).write_parquet(
        corpus / "a.parquet"
    )
    conf = write_conf(root, minilm_dir, corpus, root / "out", "week1")
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"] == 4
    return {"root": root, "out": root / "out", "report": report, "texts": texts}


def test_the_report_holds_the_run_figures(finished):
    figures = json.loads((finished["out"] / "_state" / "report.json").read_text())["figures"]
    assert (figures["tasks_done"], figures["tasks_failed"], figures["retries"]) == (4, 0, 0)
    assert figures["rows_per_s"] > 0 and figures["tokens_per_s"] > figures["rows_per_s"]
    histogram = figures["token_histogram"]
    assert histogram["max"] == 256 and len(histogram["counts"]) == TOKEN_BINS + 1
    assert sum(histogram["counts"]) == DOCS  # every row written, once
    assert set(figures["seconds_per_stage"]) >= {"read", "embed", "device", "write"}
    timeline = figures["timeline"]
    assert len(timeline["seconds"]) == len(timeline["rows_per_s"]) >= 1
    # the timeline's rates, times their bins' width, give back the rows the run did
    width = timeline["seconds"][0]
    assert sum(timeline["rows_per_s"]) * width == pytest.approx(DOCS, rel=0.01)


def test_report_png_is_drawn_and_not_blank(finished):
    import matplotlib.image

    picture = finished["out"] / "_state" / "report.png"
    assert finished["report"]["picture"] == str(picture)
    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[:2] == (800, 1200)
    assert pixels[..., :3].std() > 0.05


def test_status_prints_the_figures_and_draws_them(finished, capsys, tmp_path):
    picture = tmp_path / "status.png"
    assert main(["status", str(finished["out"]), "--plot", str(picture)]) == 0
    text = capsys.readouterr().out
    assert "throughput: " in text and " rows/s, " in text
    assert "retries: 0 (0 task(s) done after a retry, 0 failed)" in text
    assert "tokens per row written: p50 <= " in text
    assert picture.stat().st_size > 20_000


def test_plan_finds_what_cache_from_holds_and_writes_nothing_there(
    finished, capsys, tmp_path, minilm_dir
):
    out = finished["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    corpus = tmp_path / "week2"
    corpus.mkdir()
    texts = finished["texts"][: DOCS // 2] + [f"a new text, number {i}" for i in range(DOCS // 2)]
    frame = pl.DataFrame({"id": [f"d{i}" for i in range(DOCS)], "text": texts})
    frame.write_parquet(corpus / "a.parquet")
    conf = write_conf(tmp_path, minilm_dir, corpus, tmp_path / "out2", "week2")
    args = ["plan", str(conf), f"run.cache_from=[{out}]", "--sample", "0", "--json"]
    assert main([*args, "--tokens-per-s", "1000"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["cache"]["share"] == {"value": 0.5, "margin": 0}
    # the plan over the finished output itself writes nothing under it either
    assert main(["plan", str(finished["root"] / "week1.yaml"), "--tokens-per-s", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    report = run_job(load_config(conf, [f"run.cache_from=[{out}]"]))
    assert report["rows_from_cache"] == DOCS // 2
    assert np.isclose(found["estimate"]["model_tokens"]["value"] / report["tokens"], 1, atol=0.01)
