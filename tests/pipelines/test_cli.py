"""`embedpipe embed`, `embedpipe verify` and the Ray that `embedpipe run` starts, as a user
calls them."""

import io
import json

import numpy as np
import pytest

from pipelines.cli import main
from tests.conftest import MINILM
from workers import Embedder, EmbedOptions


def run(capsys, argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_prints_one_unit_vector_per_text(capsys, minilm_dir):
    code, out, _ = run(capsys, ["embed", str(minilm_dir), "first", "second text"])
    vectors = np.array(json.loads(out))
    assert code == 0 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_reads_one_text_per_line_from_stdin(capsys, monkeypatch, minilm_dir):
    code, out, _ = run(capsys, ["embed", str(minilm_dir)], "one\ntwo\nthree\n", monkeypatch)
    assert code == 0 and len(json.loads(out)) == 3


def test_embed_flags_change_the_options(capsys, minilm_dir):
    long = " ".join(f"word{i}" for i in range(400))
    _, plain, _ = run(capsys, ["embed", str(minilm_dir), long])
    _, left, _ = run(capsys, ["embed", str(minilm_dir), "--truncation-direction", "Left", long])
    _, raw, _ = run(capsys, ["embed", str(minilm_dir), "--no-normalize", "hello"])
    assert json.loads(plain) != json.loads(left)
    assert abs(np.linalg.norm(json.loads(raw)[0]) - 1.0) > 0.1
    # each flag gives the vector of its option: the last tokens kept, the raw pooled vector
    embedder = Embedder.load(minilm_dir)
    expected_left = embedder.embed([long], EmbedOptions(truncation_direction="left")).vectors
    expected_raw = embedder.embed(["hello"], EmbedOptions(normalize=False)).vectors
    np.testing.assert_allclose(json.loads(left), expected_left, atol=1e-5)
    np.testing.assert_allclose(json.loads(raw), expected_raw, atol=1e-5)


def test_too_long_text_with_no_truncate_fails_with_its_token_count(capsys, minilm_dir):
    code, out, err = run(capsys, ["embed", str(minilm_dir), "--no-truncate", "ok", "word " * 300])
    assert code == 1 and out == ""  # the README: print the reason and exit 1, without output
    assert "text 2 rejected: text has 302 tokens, over max_seq_length 256" in err


@pytest.mark.parametrize(("text", "reason"), [("", "empty"), ("   ", "whitespace")])
def test_bad_text_fails_with_the_reason(capsys, minilm_dir, text, reason):
    code, out, err = run(capsys, ["embed", str(minilm_dir), "fine", text])
    assert code == 1 and out == "" and "text 2 rejected" in err and reason in err


def test_unknown_prompt_name_is_a_clear_error(capsys, minilm_dir):
    code, _, err = run(capsys, ["embed", str(minilm_dir), "--prompt-name", "query", "x"])
    assert code != 0 and "has no prompts" in err


def test_embed_with_a_config(capsys, minilm_dir, tmp_path):
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: {MINILM}, dir: {minilm_dir}}}\ninput: {{path: in}}\n"
        "output: {path: out}\nembedding: {normalize: false}\n"
    )
    code, out, _ = run(capsys, ["embed", "--config", str(conf), "hello"])
    assert code == 0 and abs(np.linalg.norm(json.loads(out)[0]) - 1.0) > 0.1
    expected = Embedder.load(minilm_dir).embed(["hello"], EmbedOptions(normalize=False)).vectors
    np.testing.assert_allclose(json.loads(out), expected, atol=1e-5)


def test_verify_passes_fp32_and_reports_cosines(capsys, minilm_dir, minilm_path):
    code, out, _ = run(capsys, ["verify", str(minilm_dir), "--reference", str(minilm_path)])
    assert code == 0 and "min cosine" in out and out.rstrip().endswith("ok")


def test_verify_fails_under_the_threshold(capsys, minilm_int8_dir, minilm_path, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\nanother, longer text about embeddings\n")
    argv = [
        "verify",
        str(minilm_int8_dir),
        "--reference",
        str(minilm_path),
        "--texts",
        str(texts),
        "--min-cosine",
        "0.9999",
    ]
    code, out, _ = run(capsys, argv)
    assert code == 1 and "FAILED" in out


def test_run_stops_the_ray_it_started_and_leaves_a_running_one_up(capsys, minilm_dir, tmp_path):
    # The command line's run stops its own Ray while it writes the report (its process ends
    # next); a program that calls it with Ray up keeps its Ray.
    import polars as pl
    import ray

    corpus = tmp_path / "in.parquet"
    pl.DataFrame(
        {"id": ["a", "b", "c"], "text": ["one", "two words", "three more words"]}
    ).write_parquet(corpus)

    def run_into(name: str) -> None:
        conf = tmp_path / f"{name}.yaml"
        conf.write_text(
            f"model: {{source: {minilm_dir}}}\ninput: {{path: {corpus}}}\n"
            f"output: {{path: {tmp_path / name}}}\nworkers: {{device: cpu, num_actors: 1}}\n"
        )
        assert run(capsys, ["run", str(conf)])[0] == 0
        report = json.loads((tmp_path / name / "_state" / "report.json").read_text())
        assert report["rows_embedded"] == 3 and (tmp_path / name / "_SUCCESS").exists()
        assert (tmp_path / name / "_state" / "report.png").stat().st_size > 0

    assert not ray.is_initialized()
    try:
        run_into("own")
        assert not ray.is_initialized()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        run_into("theirs")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
