"""Inputs and run.cache_from on S3, through a local S3 API (moto's server): listing, every
format (compressed ones too), reading row ranges, the errors a user meets, and a run."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import polars as pl
import pytest

from pipelines.batch.run import run_job
from pipelines.config import load_config
from pipelines.inputs.line_ranges import byte_ranges, read_line_range
from pipelines.inputs.listing import list_inputs
from pipelines.inputs.readers import InputError, read_rows

ROWS = [{"id": f"{i:05d}", "text": f"text number {i}", "title": f"t{i}"} for i in range(24)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def parquet(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    pl.DataFrame(rows).write_parquet(out)
    return out.getvalue()


@pytest.fixture
def shards(bucket):
    """The 24 rows in four shards under corpus/, with an output's markers beside them."""
    bucket.put("corpus/a.parquet", parquet(ROWS[:6]))
    bucket.put("corpus/sub/b.jsonl", jsonl(ROWS[6:12]))
    bucket.put("corpus/sub/c.jsonl.gz", gzip.compress(jsonl(ROWS[12:18]).encode()))
    csv = io.BytesIO()
    pl.DataFrame(ROWS[18:]).write_csv(csv)
    bucket.put("corpus/d.csv", csv.getvalue())
    bucket.put("corpus/_SUCCESS", "")
    bucket.put("corpus/.d.csv.crc", "checksum")
    return bucket


def test_a_prefix_lists_every_shard_with_its_key_and_etag(shards):
    files = list_inputs(shards.url("corpus/"), storage=shards.storage)
    assert [(f.key, f.format, f.rows) for f in files] == [
        ("a.parquet", "parquet", 6),
        ("d.csv", "csv", 6),
        ("sub/b.jsonl", "jsonl", None),  # cut by bytes: the digest pass counts it
        ("sub/c.jsonl.gz", "jsonl", 6),
    ]
    head = shards.client.head_object(Bucket=shards.name, Key="corpus/d.csv")
    assert files[1].version == head["ETag"].strip('"') and files[1].size == head["ContentLength"]


def test_a_glob_and_a_single_object(shards):
    found = list_inputs(shards.url("corpus/**/*.jsonl*"), storage=shards.storage)
    assert [f.key for f in found] == ["sub/b.jsonl", "sub/c.jsonl.gz"]
    (one,) = list_inputs(shards.url("corpus/a.parquet"), storage=shards.storage)
    assert (one.key, one.rows) == ("a.parquet", 6)


def test_json_lines_cut_by_bytes_read_every_row_once_from_the_store(shards):
    (file,) = list_inputs(shards.url("corpus/sub/b.jsonl"), storage=shards.storage)
    cuts = byte_ranges(file.size, 37)  # lines are longer: most ranges start mid-line
    ids = [i for a, b in cuts for i in read_line_range(file, a, b, ["id"])["id"].to_list()]
    assert ids == [f"{i:05d}" for i in range(6, 12)]


def test_row_ranges_read_the_same_from_every_format(shards):
    for file in list_inputs(shards.url("corpus"), storage=shards.storage):
        frame = read_rows(file, 2, 5, ["id", "text"])
        first = {"a.parquet": 0, "sub/b.jsonl": 6, "sub/c.jsonl.gz": 12, "d.csv": 18}[file.key]
        assert frame["id"].to_list() == [f"{i:05d}" for i in range(first + 2, first + 5)]


def test_a_missing_bucket_or_prefix_is_an_error_naming_the_url(bucket):
    with pytest.raises(InputError, match=r"s3://no-such-bucket-x/in/: the bucket does not exist"):
        list_inputs("s3://no-such-bucket-x/in", storage=bucket.storage)
    with pytest.raises(InputError, match=r"matches no files"):
        list_inputs(bucket.url("nothing/here"), storage=bucket.storage)


def test_an_unreachable_endpoint_says_which_setting_to_check(bucket):
    from pipelines.storage.settings import StorageSettings

    nowhere = StorageSettings("http://127.0.0.1:9", "us-east-1", allow_http=True, attempts=1)
    with pytest.raises(InputError, match=r"cannot reach the store .*storage\.endpoint_url"):
        list_inputs(bucket.url("in/"), storage=nowhere)


@pytest.mark.usefixtures("local_ray")
def test_a_run_reads_its_input_and_cache_from_s3(shards, minilm_dir, tmp_path):
    endpoint = shards.storage.endpoint_url
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"model: {{source: {minilm_dir}}}\n"
        f"input: {{path: '{shards.url('corpus/')}', keep_columns: [title]}}\n"
        f"output: {{path: {tmp_path / 'week1'}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
        f"storage: {{endpoint_url: '{endpoint}'}}\n"
    )
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"] and report["rows_embedded"] == 24
    local = pl.read_parquet(tmp_path / "week1" / "part-*.parquet")
    assert sorted(local["id"]) == [r["id"] for r in ROWS]
    # the output copied to the store serves the next week's run as its cache
    for part in (tmp_path / "week1").glob("part-*.parquet"):
        shards.put(f"emb/week1/{part.name}", part.read_bytes())
    shards.put("emb/week1/_embedpipe.json", (tmp_path / "week1" / "_embedpipe.json").read_text())
    over = [f"output.path={tmp_path / 'week2'}", f"run.cache_from=['{shards.url('emb/week1')}']"]
    again = run_job(load_config(conf, over))
    assert (again["rows_embedded"], again["rows_from_cache"]) == (0, 24)
    copied = pl.read_parquet(tmp_path / "week2" / "part-*.parquet").sort("id")
    assert copied["embedding"].to_list() == local.sort("id")["embedding"].to_list()


def run_conf(tmp_path, model_dir, inp: str, out: str, endpoint: str, *lines: str):
    conf = tmp_path / f"job-{abs(hash(out)) % 10**6}.yaml"
    conf.write_text(
        f"model: {{source: {model_dir}}}\n"
        f"input: {{path: '{inp}', keep_columns: [title], rows_per_task: 5}}\n"
        f"output: {{path: '{out}'}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 1}\n"
        f"storage: {{endpoint_url: '{endpoint}', lock_lease_s: 3}}\n" + "".join(lines)
    )
    return conf


def object_bytes(bucket, prefix: str) -> dict[str, bytes]:
    found = {}
    for key in bucket.listed(prefix):
        found[key[len(prefix) :]] = bucket.client.get_object(Bucket=bucket.name, Key=key)[
            "Body"
        ].read()
    return found


@pytest.mark.usefixtures("local_ray")
def test_an_s3_output_holds_what_a_local_run_writes_byte_for_byte(shards, minilm_dir, tmp_path):
    endpoint = shards.storage.endpoint_url
    local = tmp_path / "local-out"
    run_job(load_config(run_conf(tmp_path, minilm_dir, shards.url("corpus"), str(local), endpoint)))
    remote = shards.url("emb/run1")
    conf = run_conf(tmp_path, minilm_dir, shards.url("corpus"), remote, endpoint)
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"] and report["output"] == remote
    stored = object_bytes(shards, "emb/run1/")
    parts = sorted(k for k in stored if k.startswith("part-") or k.startswith("_rejects/"))
    assert parts == sorted(str(p.relative_to(local)) for p in local.rglob("part-*.parquet"))
    for name in parts:
        assert stored[name] == (local / name).read_bytes()
    assert "_SUCCESS" in stored and "_state/lock" not in stored  # released
    assert len([k for k in stored if k.startswith("_state/done/")]) == report["tasks_total"]


@pytest.mark.usefixtures("local_ray")
def test_a_rerun_on_s3_keeps_finished_tasks_and_status_reads_the_store(
    shards, minilm_dir, tmp_path, capsys, monkeypatch
):
    from pipelines.cli import main

    endpoint = shards.storage.endpoint_url
    out = shards.url("emb/resume")
    conf = run_conf(tmp_path, minilm_dir, shards.url("corpus"), out, endpoint)
    run_job(load_config(conf))
    parts = [k for k in shards.listed("emb/resume/") if "/part-" in k]
    written = {k: shards.client.head_object(Bucket=shards.name, Key=k)["ETag"] for k in parts}
    shards.client.delete_object(Bucket=shards.name, Key="emb/resume/_SUCCESS")
    shards.client.delete_object(Bucket=shards.name, Key=parts[0])  # its task is redone
    time.sleep(1.1)  # a rewrite would carry a later LastModified
    again = run_job(load_config(conf))
    assert again["tasks_done"] == again["tasks_total"] and "emb/resume/_SUCCESS" in shards.listed()
    redone = {k: shards.client.head_object(Bucket=shards.name, Key=k) for k in parts}
    assert {k: h["ETag"] for k, h in redone.items()} == written  # the same bytes again
    stamps = sorted(h["LastModified"] for h in redone.values())
    assert redone[parts[0]]["LastModified"] == stamps[-1] > stamps[0]  # only it was rewritten
    capsys.readouterr()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # status has no config: the environment's
    assert main(["status", out]) == 0
    assert f"{out}: complete" in capsys.readouterr().out


def test_a_held_s3_output_is_refused_and_a_stale_lock_is_taken_over(bucket):
    from pipelines.output.state import RunState, StateError

    # S3 dates are whole seconds, so a lock's age reads up to 1 s high: a lease of 6 s leaves
    # a slow machine 5 s for the two refusals below (2 s did not, on a loaded CI runner).
    storage = dataclasses.replace(bucket.storage, lock_lease_s=6)
    holder = RunState(bucket.url("out"), storage)
    holder.acquire()
    written = time.monotonic()
    holder._lease._stop.set()  # a holder that stops renewing: as if killed
    with pytest.raises(StateError, match=r"is in use by another run \(pid \d+ on .*\); wait"):
        RunState(bucket.url("out"), storage).acquire()
    hasty = dataclasses.replace(storage, lock_lease_s=0.1)  # the holder's own lease counts
    with pytest.raises(StateError, match=r"expire \(at most [1-6] s\)"):
        RunState(bucket.url("out"), hasty).acquire()
    time.sleep(max(0.0, written + 6.5 - time.monotonic()))
    taker = RunState(bucket.url("out"), storage)
    taker.acquire()  # taken over once the lease ran out, by the store's clock
    taker.release()
    assert "out/_state/lock" not in bucket.listed()


def test_an_output_in_a_missing_bucket_is_refused_before_any_actor_starts(
    minilm_dir, tmp_path, bucket, capsys
):
    from pipelines.cli import main

    (tmp_path / "in").mkdir()
    pl.DataFrame(ROWS[:3]).write_parquet(tmp_path / "in" / "a.parquet")
    conf = run_conf(
        tmp_path,
        minilm_dir,
        str(tmp_path / "in"),
        "s3://no-such-bucket-y/out",
        bucket.storage.endpoint_url,
    )
    assert main(["run", str(conf)]) == 2
    err = capsys.readouterr().err
    assert (
        "cannot use output.path: s3://no-such-bucket-y/out/_state/lock: the bucket does not exist"
        in err
    )


@pytest.mark.usefixtures("local_ray")
def test_throttling_is_retried_and_the_run_completes(shards, minilm_dir, tmp_path):
    from tests.pipelines.helpers import ThrottlingProxy

    proxy = ThrottlingProxy(shards.storage.endpoint_url, every=7)
    try:
        out = shards.url("emb/throttled")
        conf = run_conf(tmp_path, minilm_dir, shards.url("corpus"), out, proxy.url)
        report = run_job(load_config(conf))
    finally:
        proxy.close()
    assert proxy.refused > 5, "the proxy refused nothing"
    assert (
        report["tasks_done"] == report["tasks_total"]
        and "emb/throttled/_SUCCESS" in shards.listed()
    )


# A store that checks who asks: its own moto server with IAM authorization on, and a user
# allowed everything on one bucket, reading on a second, nothing on a third.
GUARDED_SETUP_ACTIONS = 9  # the requests guarded_store makes before authorization starts


@dataclass(frozen=True)
class GuardedStore:
    endpoint: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def guarded_store():
    import boto3

    from tests.pipelines.helpers import free_port, wait_listening

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(GUARDED_SETUP_ACTIONS)}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening("127.0.0.1", port)
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
        for name in ("open", "readonly", "shut"):
            s3.create_bucket(Bucket=name)
        for name in ("open", "readonly", "shut"):
            s3.put_object(Bucket=name, Key="in/a.jsonl", Body=jsonl(ROWS[:3]).encode())
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="buckets", PolicyDocument=POLICY)
        yield GuardedStore(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.kill()
        server.wait()


POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": ["arn:aws:s3:::open", "arn:aws:s3:::open/*"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::readonly", "arn:aws:s3:::readonly/*"],
            },
        ],
    }
)


def run_as(tmp_path, minilm_dir, store: GuardedStore, inp: str, out: str, monkeypatch, capsys):
    """`embedpipe run` with the reader's keys: its exit code and what it printed on stderr."""
    from pipelines.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret)
    conf = run_conf(tmp_path, minilm_dir, inp, out, store.endpoint)
    capsys.readouterr()
    code = main(["run", str(conf)])
    return code, capsys.readouterr().err


def test_an_input_the_credentials_may_not_read_is_refused_naming_the_url(
    guarded_store, minilm_dir, tmp_path, monkeypatch, capsys
):
    code, err = run_as(
        tmp_path, minilm_dir, guarded_store, "s3://shut/in/", "s3://open/out", monkeypatch, capsys
    )
    assert code == 2, err
    assert "s3://shut/in/: access denied; grant the credentials in AWS_ACCESS_KEY_ID read" in err
    assert "Traceback" not in err


def test_an_output_the_credentials_may_only_read_is_refused_before_any_actor_starts(
    guarded_store, minilm_dir, tmp_path, monkeypatch, capsys
):
    code, err = run_as(
        tmp_path,
        minilm_dir,
        guarded_store,
        "s3://open/in/",
        "s3://readonly/out",
        monkeypatch,
        capsys,
    )
    assert code == 2, err
    assert "cannot use output.path: s3://readonly/out/_state/lock: access denied" in err


def test_a_wrong_key_is_refused_naming_the_variables_to_set(
    guarded_store, minilm_dir, tmp_path, monkeypatch, capsys
):
    wrong = dataclasses.replace(guarded_store, key_id="AKIANOTAREALKEY00000")
    code, err = run_as(
        tmp_path, minilm_dir, wrong, "s3://open/in/", "s3://open/out", monkeypatch, capsys
    )
    assert code == 2, err
    assert (
        "s3://open/in/: the credentials were refused (InvalidAccessKeyId); set AWS_ACCESS_KEY_ID"
        in err
    )
