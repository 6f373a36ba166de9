"""Chaos harness: `embedpipe run` under random SIGKILLs, compared with a clean run.

It runs the job once undisturbed, then again on a new output while SIGKILLing, at random
moments, the actors of the run and the driver itself; after each driver kill it starts the run
again, until a run exits 0. The result must equal the clean run's: the same part and reject
files byte for byte, every input row once (embedded or rejected), no id twice, no temporary file
anywhere, `_SUCCESS` present. The corpus has bad rows and ids repeated across shards, so the
kills also hit the rejects and the repeat bookkeeping. With --chunked (embedding.chunking) a row
is a chunk: each (id, chunk) once, and every chunk of an embedded text present or rejected.

Every run is a separate `embedpipe run` process with its own embedded Ray, started in a new
session: after a driver kill the harness ends that session's process group, as a node's
supervisor would, since Ray's agents outlive a SIGKILLed driver. Only processes descended from
the harness's own drivers are ever killed.

    python -m tests.chaos --model-dir models/all-MiniLM-L6-v2-fp32 --tasks 200 --kills 30
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from pipelines.demo import build_demo_corpus

EMBEDPIPE = [sys.executable, "-m", "pipelines.cli"]
ROWS_PER_TASK = 10
CHUNK_TOKENS = 64
# The share of runs whose driver is killed while Ray starts, before any actor is up. Such a kill
# costs a whole restart and meets no work in flight; drawn at every look (each 0.3-1 s of a start-up
# of 7 s or more) it took 9 of 10 kills (seed 7), leaving a single kill for the actors mid-run.
STARTUP_KILL_SHARE = 0.2
# A run that has not exited by then is stuck, not slow (a whole clean run of 40 tasks takes under
# a minute here): the harness ends it and fails, naming its log, instead of waiting forever.
RUN_DEADLINE_S = 300


@dataclass
class ChaosReport:
    tasks: int
    kills: list[str] = field(default_factory=list)  # "actor" or "driver", in order
    runs: int = 0
    rows_checked: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    files_compared: int = 0
    files_differing: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    success_marker: bool = False
    seconds: float = 0.0

    @property
    def driver_kills(self) -> int:
        return self.kills.count("driver")

    @property
    def actor_kills(self) -> int:
        return self.kills.count("actor")

    def summary(self) -> dict[str, object]:
        return {
            **asdict(self),
            "kills": len(self.kills),
            "driver_kills": self.driver_kills,
            "actor_kills": self.actor_kills,
            "restarts": self.runs - 1,
        }


def build_corpus(root: Path, tasks: int) -> int:
    """Demo shards of stdlib docstrings sized to `tasks` tasks, plus one CSV shard of bad rows:
    ids repeated from other shards, a null id, empty and blank texts. Returns the row count."""
    shards = 6
    per_shard = max((tasks - 1) // shards, 1) * ROWS_PER_TASK
    rows = build_demo_corpus(root, limit=per_shard * shards, shards=shards)
    first = pl.read_parquet(root / "stdlib-00.parquet")
    bad = [
        {"id": first["id"][0], "text": "a repeat of the first id", "module": "x"},
        {"id": first["id"][3], "text": first["text"][3], "module": "x"},
        {"id": None, "text": "a row without an id", "module": "x"},
        {"id": "bad-empty", "text": "", "module": "x"},
        {"id": "bad-blank", "text": "   ", "module": "x"},
        *({"id": f"extra-{i}", "text": f"extra row {i}", "module": "x"} for i in range(5)),
    ]
    pl.DataFrame(bad).write_csv(root / "stdlib-99-bad.csv")
    return rows + len(bad)


def write_config(
    path: Path,
    model_dir: Path,
    corpus: Path,
    out: Path,
    run: str = "stop_grace_s: 0",
    chunked: bool = False,
) -> Path:
    """chunked: embedding.chunking of CHUNK_TOKENS-token windows, most docstrings several."""
    chunking = f", chunking: {{tokens: {CHUNK_TOKENS}, overlap: 8}}" if chunked else ""
    path.write_text(
        f"model: {{source: {model_dir}}}\n"
        f"input: {{path: {corpus}, rows_per_task: {ROWS_PER_TASK}, keep_columns: [module]}}\n"
        f"output: {{path: {out}}}\n"
        f"embedding: {{max_batch_tokens: 4096{chunking}}}\n"
        "workers: {device: cpu, cpus_per_actor: 1, num_actors: 2}\n"
        f"run: {{max_retries: 5, {run}}}\n"
    )
    return path


def start_run(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`embedpipe run` in a new session (its own process group), output appended to log."""
    env = run_env(env)
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [*EMBEDPIPE, "run", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Each run starts its own embedded Ray ("local"), never joining one found on the machine."""
    return {**os.environ, "RAY_ADDRESS": "local", **(extra or {})}


def end_session(proc: subprocess.Popen[bytes]) -> None:
    """Ends what is left of a run's process group (Ray agents outlive a killed driver)."""
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def descendants(root: int) -> list[tuple[int, bytes]]:
    """(pid, cmdline) of every live process below root."""
    parents: dict[int, int] = {}
    titles: dict[int, bytes] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += [(c, titles[c]) for c in children]
        frontier += children
    return found


def actor_pids(driver: int) -> list[int]:
    return [pid for pid, title in descendants(driver) if title.startswith(b"ray::EmbedActor")]


def done_share(out: Path, tasks: int) -> float:
    done = out / "_state" / "done"
    return len(list(done.glob("*.json"))) / tasks if done.is_dir() else 0.0


def run_with_kills(
    config: Path, out: Path, report: ChaosReport, want: int, rng: random.Random
) -> None:
    """Runs until a run exits 0, SIGKILLing actors and the driver until `want` kills are in."""
    log = out.parent / f"{out.name}.log"
    max_runs = 2 * want + 10
    while True:
        report.runs += 1
        if report.runs > max_runs:
            raise RuntimeError(f"no run completed in {max_runs} runs; see {log}")
        proc = start_run(config, log)
        next_kill = time.monotonic() + rng.uniform(0.5, 3.0)
        deadline = time.monotonic() + RUN_DEADLINE_S
        kill_starting = rng.random() < STARTUP_KILL_SHARE
        while proc.poll() is None:
            time.sleep(0.05)
            if time.monotonic() > deadline:
                proc.kill()  # the driver; end_session takes the rest of its group
                end_session(proc)
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(
                    f"run {report.runs} did not exit in {RUN_DEADLINE_S} s after kills "
                    f"{report.kills}; the end of {log}:\n{tail}"
                )
            if len(report.kills) >= want:
                continue
            # kills still owed near the end: at once, so the run cannot finish first
            if time.monotonic() < next_kill and done_share(out, report.tasks) <= 0.8:
                continue
            victim = choose_victim(proc.pid, out, report, want, rng, kill_starting)
            if victim is None:
                next_kill = time.monotonic() + rng.uniform(0.3, 1.0)
                continue
            kind, pid = victim
            if kind == "driver" and proc.poll() is not None:
                # it exited while the victim was chosen: until reaped it is a zombie, which
                # takes a SIGKILL without effect, and the kill would count for nothing
                break
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            report.kills.append(kind)
            next_kill = time.monotonic() + rng.uniform(0.3, 3.0)
        end_session(proc)
        if proc.returncode == 0:
            return


def choose_victim(
    driver: int,
    out: Path,
    report: ChaosReport,
    want: int,
    rng: random.Random,
    kill_starting: bool,
) -> tuple[str, int] | None:
    """Mostly mid-run: an actor, or the driver a third of the time; the driver while it starts
    up when this run drew kill_starting; the driver when the run is near its end with kills
    still to come, so that it cannot finish first. None: not now."""
    actors = actor_pids(driver)
    if not actors:
        return ("driver", driver) if kill_starting else None
    # at least a quarter of the kills hit the driver, whatever the dice say
    owed = max(1, want // 4) - report.driver_kills >= want - len(report.kills)
    if owed or done_share(out, report.tasks) > 0.9 or rng.random() < 0.33:
        return "driver", driver
    return "actor", rng.choice(actors)


def output_files(out: Path) -> list[str]:
    """The part and reject files under out (the run state's timings differ by nature)."""
    return sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*.parquet") if "_state" not in p.parts
    )


def compare(clean: Path, chaotic: Path, corpus_rows: int, report: ChaosReport) -> None:
    names, theirs = output_files(clean), output_files(chaotic)
    report.files_compared = len(names)
    report.files_differing = sorted(set(names) ^ set(theirs)) + [
        n for n in names if n in theirs and not filecmp.cmp(clean / n, chaotic / n, shallow=False)
    ]
    parts = pl.read_parquet(chaotic / "part-*.parquet")
    rejects = pl.read_parquet(chaotic / "_rejects" / "*.parquet")
    report.rows_checked = len(parts) + len(rejects)
    # a row (a chunk under chunking) once: an id (with its chunk) once, a reject place once
    chunked = "chunk" in parts.columns
    row = ["id", "chunk"] if chunked else ["id"]
    place = ["file", "row", "chunk"] if chunked else ["file", "row"]
    unique = parts.select(pl.struct(row).n_unique()).item()
    places = rejects.select(pl.struct(place).n_unique()).item()
    report.rows_duplicated = (len(parts) - unique) + (len(rejects) - places)
    # every input row in the parts or rejected whole; and under chunking, each row's chunks all
    whole = rejects.filter(pl.col("chunk").is_null()) if chunked else rejects
    report.rows_lost = corpus_rows - parts["id"].n_unique() - len(whole)
    if chunked:
        counts = parts.group_by("id").agg(pl.len(), pl.col("n_chunks").first())
        rejected = rejects.filter(pl.col("chunk").is_not_null()).group_by("id").agg(pl.len())
        short = counts.join(rejected, on="id", how="left", suffix="_rejected").filter(
            pl.col("len") + pl.col("len_rejected").fill_null(0) != pl.col("n_chunks")
        )
        report.rows_lost += short.height
    report.temporary_files = [str(p) for p in chaotic.rglob("*") if ".tmp-" in p.name]
    report.success_marker = (chaotic / "_SUCCESS").is_file()


def chaos(
    model_dir: Path, work: Path, tasks: int, kills: int, seed: int, chunked: bool = False
) -> ChaosReport:
    started = time.monotonic()
    corpus = work / "in"
    rows = build_corpus(corpus, tasks)
    clean = write_config(work / "clean.yaml", model_dir, corpus, work / "clean", chunked=chunked)
    subprocess.run(
        [*EMBEDPIPE, "run", str(clean)],
        check=True,
        capture_output=True,
        env=run_env(),
        timeout=RUN_DEADLINE_S,
    )
    planned = len(json.loads((work / "clean" / "_state" / "plan.json").read_text())["tasks"])
    report = ChaosReport(tasks=planned)
    chaotic = write_config(work / "chaos.yaml", model_dir, corpus, work / "chaos", chunked=chunked)
    run_with_kills(chaotic, work / "chaos", report, kills, random.Random(seed))
    compare(work / "clean", work / "chaos", rows, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported model")
    parser.add_argument("--work", type=Path, default=Path("build/chaos"))
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument(
        "--chunked", action="store_true", help=f"embedding.chunking of {CHUNK_TOKENS} tokens"
    )
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"{args.work} is not empty; remove it or pass --work")
    args.work.mkdir(parents=True, exist_ok=True)
    report = chaos(args.model_dir, args.work, args.tasks, args.kills, args.seed, args.chunked)
    print(json.dumps({"seed": args.seed, **report.summary()}, indent=2))
    ok = not (report.rows_lost or report.rows_duplicated or report.files_differing)
    return 0 if ok and report.success_marker and not report.temporary_files else 1


if __name__ == "__main__":
    sys.exit(main())
