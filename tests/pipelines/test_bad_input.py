"""The bad input catalogue (docs/robustness.md): every bad input tried, and what the user sees.

One run on a local Ray reads a directory that holds one of each bad shard beside good ones; the
tests after it each check one row of the catalogue on that run's output. Inputs refused before
Ray starts are run through the CLI, for their exit code and message. The last test keeps the
catalogue honest: every test it names must exist.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipelines.batch.preflight import check_paths
from pipelines.batch.run import run_job
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.readers import InputError, read_rows
from pipelines.output.state import RunState

ROOT = Path(__file__).parents[2]
HUGE = 10_000_000  # characters in the 10 MB document
LATIN1 = "café crème".encode("latin-1")


pytestmark = pytest.mark.usefixtures("local_ray")


def rows(prefix: str, n: int) -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "text": f"document {i} of {prefix}", "title": "t"} for i in range(n)
    ]


def jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def huge_text() -> str:
    words = " ".join(f"word{i % 5000}" for i in range(20000))
    return (words * (HUGE // len(words) + 1))[:HUGE]


def build_bad_corpus(root: Path) -> Path:
    """Good shards and one of each bad shard the pipeline must survive."""
    root.mkdir(parents=True)
    pl.DataFrame(rows("good", 4)).write_parquet(root / "good.parquet")
    jsonl(root / "good.jsonl", rows("goodj", 3))
    csv = b"id,text,title\nc-0,fine,t\nc-1," + LATIN1 + b",t\nc-2,fine too,t\n"
    (root / "latin1.csv").write_bytes(csv)
    (root / "latin1.jsonl").write_bytes(
        b'{"id":"j-0","text":"ok","title":"t"}\n'
        + b'{"id":"j-1","text":"'
        + LATIN1
        + b'","title":"t"}\n'
    )
    coerced = [
        *rows("m", 1),
        {"id": "m-1", "text": 5, "title": "t"},
        {"id": "m-2", "text": {"a": 1}, "title": "t"},
    ]
    jsonl(root / "coerced.jsonl", coerced)
    pl.DataFrame({"id": ["n-0", "n-1"], "text": [1, 2], "title": ["t", "t"]}).write_parquet(
        root / "numbers.parquet"
    )
    pl.DataFrame({"id": ["h-0"], "text": [huge_text()], "title": ["t"]}).write_parquet(
        root / "huge.parquet"
    )
    pl.DataFrame({"id": ["b-0"], "body": ["x"], "title": ["t"]}).write_parquet(
        root / "nobody.parquet"
    )
    for name in ("empty.csv", "empty.jsonl", "empty.parquet"):
        (root / name).write_bytes(b"")
    pl.DataFrame(schema={"id": pl.String, "text": pl.String, "title": pl.String}).write_parquet(
        root / "zero.parquet"
    )
    (root / "broken.parquet").symlink_to(root / "gone.parquet")
    return root


def write_conf(path: Path, model: Path, corpus: Path, out: Path, extra: str = "") -> Path:
    path.write_text(
        f"model: {{source: {model}}}\n"
        f"input: {{path: {corpus}, rows_per_task: 100, keep_columns: [title]}}\n"
        f"output: {{path: {out}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
        "run: {max_retries: 0}\n" + extra
    )
    return path


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, minilm_dir):
    """The report, output dir, parts, rejects and failed markers (by file name) of one run."""
    tmp = tmp_path_factory.mktemp("bad")
    corpus = build_bad_corpus(tmp / "in")
    report = run_job(load_config(write_conf(tmp / "job.yaml", minilm_dir, corpus, tmp / "out")))
    out = Path(report["output"])
    failed = {Path(m.file).name: m for m in RunState(out).failed().values()}
    parts = pl.read_parquet(out / "part-*.parquet")
    rejects = pl.read_parquet(out / "_rejects" / "*.parquet")
    return report, out, parts, rejects, failed


def test_invalid_utf8_csv_fails_its_file_naming_the_line_and_the_fix(bad_run):
    *_, failed = bad_run
    message = failed["latin1.csv"].message
    assert re.search(r"latin1\.csv: line 3 \(byte 32\) is not valid UTF-8", message), message
    assert "iconv -f latin1 -t utf-8" in message and failed["latin1.csv"].attempts == 1


def test_invalid_utf8_jsonl_fails_its_file_naming_the_line_and_the_fix(bad_run):
    *_, failed = bad_run
    message = failed["latin1.jsonl"].message
    assert re.search(r"latin1\.jsonl: line 2 \(byte 60\) is not valid UTF-8", message), message
    assert "iconv -f latin1 -t utf-8" in message


def test_the_other_shards_go_on_and_no_row_is_lost(bad_run):
    report, out, parts, rejects, failed = bad_run
    assert sorted(failed) == [
        "broken.parquet",
        "coerced.jsonl",
        "latin1.csv",
        "latin1.jsonl",
        "nobody.parquet",
    ]
    assert sorted(parts["id"]) == [
        *(f"good-{i}" for i in range(4)),
        *(f"goodj-{i}" for i in range(3)),
        "h-0",
    ]
    assert sorted(rejects["id"]) == ["n-0", "n-1"]
    assert report["tasks_done"] == 4 and report["tasks_failed"] == 5  # good x2, numbers, huge
    assert not (out / "_SUCCESS").exists()


def test_non_string_text_in_parquet_is_a_reject_with_its_type(bad_run):
    *_, rejects, _ = bad_run
    assert set(rejects["reason"]) == {"text is not a string but int"}
    assert rejects["file"].to_list() == ["numbers.parquet"] * 2 and rejects["row"].to_list() == [
        0,
        1,
    ]


def test_jsonl_text_mixing_strings_and_numbers_fails_naming_the_line(bad_run):
    *_, failed = bad_run
    message = failed["coerced.jsonl"].message
    assert "coerced.jsonl: line 2 (row 1): 'text' is a JSON number, 5, not a string" in message
    assert "Write every 'text' as a JSON string or null" in message


def test_a_10_mb_document_is_embedded_truncated(bad_run):
    _, _, parts, _, _ = bad_run
    huge = parts.filter(pl.col("id") == "h-0").row(0, named=True)
    assert huge["n_tokens"] == 256 and huge["truncated"] is True


def test_a_file_lacking_the_text_column_fails_alone_listing_its_columns(bad_run):
    *_, failed = bad_run
    assert failed["nobody.parquet"].message.endswith(
        "nobody.parquet: column(s) text not found; columns are: id, body, title. "
        "Set input.text_column"
    )


def test_a_broken_symlink_fails_its_task_naming_the_path(bad_run):
    *_, failed = bad_run
    message = failed["broken.parquet"].message
    assert "broken.parquet is a symbolic link to a missing" in message and "gone.parquet" in message


def test_empty_files_and_a_zero_row_parquet_plan_no_task(bad_run):
    _, out, *_ = bad_run
    planned = {entry["file"] for entry in RunState(out).plan()}
    assert not planned & {"empty.csv", "empty.jsonl", "empty.parquet", "zero.parquet"}
    assert "good.parquet" in planned


@pytest.mark.parametrize("name", ["e.csv", "e.jsonl", "e.parquet"])
def test_an_empty_file_is_zero_rows_with_a_warning(tmp_path, caplog, name):
    (tmp_path / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="pipelines.inputs.readers"):
        [file] = list_inputs(str(tmp_path / name))
    assert (file.rows, file.error) == (0, None)
    assert f"{name} is empty (0 bytes): read as zero rows" in caplog.text


def test_only_zero_row_files_complete_with_success(tmp_path, minilm_dir):
    corpus = tmp_path / "in"
    corpus.mkdir()
    pl.DataFrame(schema={"id": pl.String, "text": pl.String}).write_parquet(corpus / "zero.parquet")
    (corpus / "empty.csv").write_bytes(b"")
    conf = write_conf(tmp_path / "job.yaml", minilm_dir, corpus, tmp_path / "out")
    report = run_job(load_config(conf, ["input.keep_columns=[]"]))
    assert report["tasks_total"] == 0 and (tmp_path / "out" / "_SUCCESS").exists()


def run_cli(capsys, conf: Path, *overrides: str) -> tuple[int, str]:
    code = main(["run", str(conf), *overrides])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("input.text_column=body", r"columns are: id, text, title\. Set input\.text_column"),
        ("input.id_column=doc", r"column\(s\) doc not found.*Set input\.id_column"),
        ("input.keep_columns=[lang]", r"column\(s\) lang not found.*Set input\.keep_columns"),
    ],
)
def test_a_column_no_file_has_is_refused_before_ray_starts(
    tmp_path, minilm_dir, capsys, override, expected
):
    corpus = tmp_path / "in"
    corpus.mkdir()
    for name in ("a.parquet", "b.parquet"):
        pl.DataFrame(rows(name, 2)).write_parquet(corpus / name)
    code, err = run_cli(
        capsys, write_conf(tmp_path / "job.yaml", minilm_dir, corpus, tmp_path / "out"), override
    )
    assert code == 2 and err.startswith("embedpipe: error: no input file has every column")
    assert re.search(expected, err) and "(and 1 more file(s) alike)" in err
    assert not (tmp_path / "out").exists()  # refused before the output, actors or Ray


def test_a_path_that_does_not_exist_exits_2(tmp_path, minilm_dir, capsys):
    conf = write_conf(tmp_path / "job.yaml", minilm_dir, tmp_path / "nope", tmp_path / "out")
    code, err = run_cli(capsys, conf)
    assert code == 2 and f"input.path '{tmp_path / 'nope'}' does not exist" in err


@pytest.mark.parametrize(
    ("inp", "out", "expected"),
    [
        ("in", "in/embeddings", "output.path .* is inside input.path"),
        ("in", "in", "is inside output.path"),
        ("in/**/*.parquet", "in/sub/out", "output.path .* is inside input.path"),
        ("in/out/a.parquet", "in/out", "input.path .* is inside output.path"),
    ],
)
def test_output_and_input_inside_each_other_are_refused(
    tmp_path, minilm_dir, capsys, inp, out, expected
):
    (tmp_path / "in" / "out").mkdir(parents=True)
    pl.DataFrame(rows("a", 2)).write_parquet(tmp_path / "in" / "out" / "a.parquet")
    conf = write_conf(tmp_path / "job.yaml", minilm_dir, tmp_path / inp, tmp_path / out)
    code, err = run_cli(capsys, conf)
    assert code == 2 and re.search(expected, err), err
    assert not (tmp_path / out / "_state").exists()


def test_an_output_the_listing_skips_may_sit_inside_the_input(tmp_path):
    (tmp_path / "in").mkdir()
    check_paths(str(tmp_path / "in"), tmp_path / "in" / "_embeddings")  # does not raise
    check_paths(str(tmp_path / "in" / "a.parquet"), tmp_path / "in" / "out")


def test_a_model_whose_onnx_does_not_match_its_card_exits_2(tmp_path, minilm_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(minilm_dir, model)
    with open(model / "model.onnx", "ab") as f:
        f.write(b"\0")
    corpus = tmp_path / "in"
    corpus.mkdir()
    pl.DataFrame(rows("a", 2)).write_parquet(corpus / "a.parquet")
    code, err = run_cli(capsys, write_conf(tmp_path / "job.yaml", model, corpus, tmp_path / "out"))
    assert code == 2 and "model.onnx does not match the sha256 in" in err
    assert "re-export or re-copy the directory" in err


def test_a_permission_error_names_the_file(tmp_path, monkeypatch):
    # Tests run as root, which chmod cannot lock out: make the open itself fail.
    pl.DataFrame(rows("a", 2)).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame(rows("b", 2)).write_csv(tmp_path / "b.csv")

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pipelines.inputs.readers.pq.ParquetFile", denied)
    [file] = list_inputs(str(tmp_path / "a.parquet"))
    assert file.error == (
        f"{tmp_path / 'a.parquet'}: permission denied; make it readable by the user that runs "
        "embedpipe and its Ray workers"
    )
    [csv] = list_inputs(str(tmp_path / "b.csv"))
    monkeypatch.setattr("pipelines.inputs.readers.pl.scan_csv", denied)
    with pytest.raises(InputError, match=r"b\.csv: permission denied"):
        read_rows(csv, 0, 2, ["id", "text"])


def test_a_fifo_in_the_input_fails_its_task_instead_of_being_skipped(tmp_path):
    import os

    (tmp_path / "a.csv").write_text("id,text\n1,x\n")
    os.mkfifo(tmp_path / "pipe.csv")
    files = {f.key: f for f in list_inputs(str(tmp_path))}
    assert files["a.csv"].rows == 1
    assert files["pipe.csv"].error == (
        f"{tmp_path / 'pipe.csv'} is not a regular file (a FIFO, socket or device); remove it"
    )


def test_a_directory_named_like_a_shard_is_read_as_a_directory(tmp_path):
    (tmp_path / "y.csv").mkdir()
    (tmp_path / "y.csv" / "part-0.csv").write_text("id,text\n1,x\n")
    assert [(f.key, f.rows) for f in list_inputs(str(tmp_path))] == [("y.csv/part-0.csv", 1)]


def catalogue_tests() -> list[str]:
    text = (ROOT / "docs" / "robustness.md").read_text()
    return sorted(set(re.findall(r"`(tests/[\w/]+\.py::\w+)", text)))


def test_every_test_the_catalogue_names_exists():
    named = catalogue_tests()
    assert len(named) >= 20
    missing = []
    for entry in named:
        path, name = entry.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        if not callable(getattr(module, name, None)):
            missing.append(entry)
    assert not missing, f"docs/robustness.md names tests that do not exist: {missing}"
    readme = (ROOT / "README.md").read_text()
    assert "docs/robustness.md" in readme
