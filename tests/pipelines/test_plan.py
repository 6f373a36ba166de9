"""`embedpipe plan`: the figures a user decides on before a run, checked against what the corpus
holds (counted here independently): exact when every text is read, within the stated margin
when sampled; nothing written under output.path; the JSON keys documented; the picture drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tokenizers import Tokenizer

from pipelines.cli import main
from pipelines.plan.input_pass import BottomK

ROOT = Path(__file__).resolve().parents[2]
MAX_SEQ = 256  # all-MiniLM-L6-v2's


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, parity_texts) -> dict:
    """1,000 rows in Parquet, JSON Lines and CSV: real docstrings (74 of the 557 over 256
    tokens), 15% of rows repeating an earlier row's text, 12 null texts, 5 empty ones, 7 null
    ids and 9 repeated ids; and the truth about it."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("plan-corpus")
    rows: list[tuple[str | None, str | None]] = []
    for i in range(1000):
        if rows and rng.random() < 0.15:
            text = rows[int(rng.integers(len(rows)))][1]
        else:
            text = parity_texts[i % len(parity_texts)] + f" ({i})"
        rows.append((f"doc-{i}", text))
    for i in rng.choice(np.arange(0, 400), 12, replace=False):  # null texts: Parquet rows only
        rows[i] = (rows[i][0], None)
    for i in rng.choice(np.arange(400, 1000), 5, replace=False):
        rows[i] = (rows[i][0], "")
    for i in range(7):  # null ids
        rows[50 + i] = (None, rows[50 + i][1])
    for i in range(9):  # repeated ids
        rows[900 + i] = (f"doc-{i}", rows[900 + i][1])
    frame = pl.DataFrame({"id": [r[0] for r in rows], "text": [r[1] for r in rows]})
    frame[:400].write_parquet(root / "a.parquet")
    frame[400:700].write_ndjson(root / "b.jsonl")
    frame[700:].write_csv(root / "c.csv")
    return {"root": root, "rows": rows}


def truth(rows: list, minilm_dir: Path) -> dict:
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_truncation()
    seen: set[str] = set()
    live = []  # what the run embeds or copies: an id not seen before, and a text
    for row_id, text in rows:
        if row_id is not None and row_id not in seen and text:
            live.append(text)
        seen.add(row_id)
    counts: dict[str, int] = {}
    for text in live:
        counts[text] = counts.get(text, 0) + 1
    lengths = {t: len(tok.encode(t).ids) for t in counts}
    over = sum(n for t, n in counts.items() if lengths[t] > MAX_SEQ)
    return {
        "live": len(live),
        "text_share": (len(live) - len(counts)) / len(live),
        "over_share": over / len(live),
        "model_tokens": sum(min(n, MAX_SEQ) for n in lengths.values()),  # each text once
        "max": max(lengths.values()),
    }


def conf(tmp_path: Path, model: Path, corpus: Path, out: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 150}}\n"
        f"output: {{path: {out}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
    )
    return path


def plan(capsys, config: Path, *args: str) -> dict:
    assert main(["plan", str(config), "--json", "--tokens-per-s", "1000", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_with_every_text_read_the_counts_are_exact(tmp_path, capsys, minilm_dir, corpus):
    found = plan(
        capsys, conf(tmp_path, minilm_dir, corpus["root"], tmp_path / "out"), "--sample", "0"
    )
    real = truth(corpus["rows"], minilm_dir)
    assert {f: (c["files"], c["rows"]) for f, c in found["inputs"].items()} == {
        "parquet": (1, 400),
        "jsonl": (1, 300),
        "csv": (1, 300),
    }
    assert found["rows"] == 1000
    assert found["tasks"] == sum(c["tasks"] for c in found["inputs"].values()) >= 3
    rejects = found["rejects"]
    assert (rejects["null_text"], rejects["empty_text"], rejects["null_id"]) == (12, 5, 7)
    assert rejects["repeated_id"] == {"value": 9, "margin": 0}
    assert found["sample"]["exact"] is True
    assert found["repeats"]["text_share"] == {"value": round(real["text_share"], 4), "margin": 0}
    assert found["tokens"]["over_max_share"]["value"] == round(real["over_share"], 4)
    assert found["tokens"]["max"] == real["max"]
    assert found["estimate"]["model_tokens"] == {"value": real["model_tokens"], "margin": 0}
    assert found["repeats"]["id_share"]["value"] == round(9 / 993, 4)  # of rows with an id
    # the given throughput, on the config's 2 actors
    assert found["estimate"]["wall_s"] == pytest.approx(real["model_tokens"] / 2000, abs=0.1)


def test_a_sample_is_within_its_stated_margin(tmp_path, capsys, minilm_dir, corpus):
    found = plan(
        capsys, conf(tmp_path, minilm_dir, corpus["root"], tmp_path / "out"), "--sample", "150"
    )
    real = truth(corpus["rows"], minilm_dir)
    assert found["sample"]["texts"] == 150 and found["sample"]["exact"] is False
    assert found["rows"] == 1000  # counted from every row, not sampled
    estimates = [
        (found["repeats"]["text_share"], real["text_share"]),
        (found["tokens"]["over_max_share"], real["over_share"]),
        (found["estimate"]["model_tokens"], real["model_tokens"]),
    ]
    for estimate, value in estimates:
        # the margin is 95%: twice it (4 standard errors) keeps this test from failing by chance
        assert estimate["margin"] > 0
        assert abs(estimate["value"] - value) <= 2 * estimate["margin"], (estimate, value)


def test_plan_writes_nothing_under_the_output_path(tmp_path, capsys, minilm_dir, corpus):
    out = tmp_path / "out"
    plan(capsys, conf(tmp_path, minilm_dir, corpus["root"], out))
    assert not out.exists()
    out.mkdir()
    (out / "kept.txt").write_text("a file the plan must leave alone")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    plan(capsys, conf(tmp_path, minilm_dir, corpus["root"], out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_the_text_fits_a_screen_and_a_measured_throughput_is_named(
    tmp_path, capsys, minilm_dir, corpus
):
    config = conf(tmp_path, minilm_dir, corpus["root"], tmp_path / "out")
    assert main(["plan", str(config), "--sample", "100"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 24 and "rows: 1,000 in" in text
    assert re.search(
        r"wall time: ~.* on 2 actor\(s\) at [\d,]+ tokens/s each \(measured here: cpu", text
    )


def test_every_json_key_is_documented(tmp_path, capsys, minilm_dir, corpus):
    found = plan(
        capsys, conf(tmp_path, minilm_dir, corpus["root"], tmp_path / "out"), "--sample", "50"
    )
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Before a run: embedpipe plan") :]
    section = section[: section.index("\n### ", 5)]

    def keys(node: object) -> set[str]:
        if not isinstance(node, dict):
            return set()
        return {k for k in node} | {k for v in node.values() for k in keys(v)}

    formats = set(found["inputs"])
    missing = [k for k in keys(found) - formats if f"`{k}`" not in section]
    assert not missing, f"README's plan section does not name {missing}"


def test_the_histogram_png_renders(tmp_path, capsys, minilm_dir, corpus):
    import matplotlib.image

    picture = tmp_path / "lengths.png"
    config = conf(tmp_path, minilm_dir, corpus["root"], tmp_path / "out")
    plan(capsys, config, "--sample", "200", "--plot", str(picture))
    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[:2] == (450, 800)
    assert pixels[..., :3].std() > 0.05  # bars, axes and text on white: not a blank image


def test_a_bad_config_is_refused_before_reading(tmp_path, capsys, minilm_dir):
    config = conf(tmp_path, minilm_dir, tmp_path / "nothing-here", tmp_path / "out")
    assert main(["plan", str(config)]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_a_bottom_k_sample_keeps_the_smallest_keys_with_all_their_counts():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    offered = np.concatenate([keys, keys[:1000]])  # the first 1,000 twice
    sketch = BottomK(100)
    for part in np.array_split(rng.permutation(offered), 7):
        sketch.offer(part)
    smallest = np.sort(np.unique(keys))[:100]
    assert sorted(sketch.counts) == smallest.tolist()
    twice = set(keys[:1000].tolist())
    assert all(sketch.counts[k] == (2 if k in twice else 1) for k in sketch.counts)
