"""Benchmark (make bench-plan): what `embedpipe plan` costs next to the run it plans, and how
close its figures come.

bench-scale's corpus (1M synthetic rows in Parquet, 5% repeated ids, 10% repeated texts) and
model (the one-layer 16-dim BERT stand-in, so the run's time is the pipeline's own: the
hardest case for the ratio, since a real model makes the run far longer and the plan no
longer). In fresh processes: `embedpipe plan --json` with the default sample (10,000 texts,
the model timed here), `plan --sample 0` (every text tokenized), then `embedpipe run`. Reports
the seconds of each, `plan_to_run_ratio` (plan / run, both wall time from the command's start
to its end) and the plan's estimates beside what the run did.

    python bench/plan.py --out bench/results/plan.json        (make bench-plan)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, run_config, write_result
from scale import scale_conf, stand_in_model, synthetic_corpus


def main() -> None:
    args = parse_args()
    model = stand_in_model(args.work)
    corpus = synthetic_corpus(args.work / "in-parquet", args.rows, "parquet")
    out = args.work / "out"
    conf = scale_conf(model, corpus, out)
    sampled, sampled_s = plan(conf)
    exact, exact_s = plan(conf, "--sample", "0")
    assert not out.exists(), "plan wrote under output.path"
    clock = time.monotonic()
    report = run_config(conf)["report"]
    run_s = time.monotonic() - clock
    written = sum(p.stat().st_size for p in out.rglob("part-*.parquet"))
    shutil.rmtree(out)
    shutil.rmtree(corpus)
    write_result(
        args.out,
        {
            "rows": args.rows,
            "plan_s": round(sampled_s, 2),
            "plan_exact_s": round(exact_s, 2),
            "run_s": round(run_s, 2),
            "plan_to_run_ratio": round(sampled_s / run_s, 4),
            "plan_exact_to_run_ratio": round(exact_s / run_s, 4),
            "estimate": estimates(sampled),
            "estimate_exact": estimates(exact),
            "actual": {
                "model_tokens": report["tokens"],
                "rows_written": report["rows_embedded"]
                + report["rows_from_cache"]
                + report["rows_deduplicated"],
                "rows_rejected": report["rows_rejected"],
                "seconds_embedding": report["seconds_embedding"],
                "output_bytes": written,
            },
        },
    )


def plan(conf: Path, *args: str) -> tuple[dict, float]:
    """`embedpipe plan --json` in a fresh process: its figures and wall seconds."""
    clock = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "plan", str(conf), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout), time.monotonic() - clock


def estimates(found: dict) -> dict:
    est = found["estimate"]
    return {
        "model_tokens": est["model_tokens"],
        "rows_written": est["rows_written"],
        "repeated_id": found["rejects"]["repeated_id"],
        "text_share": found["repeats"]["text_share"],
        "wall_s": est["wall_s"],
        "tokens_per_s": est["tokens_per_s"],
        "output_bytes": est["output_bytes"],
        "sample_texts": found["sample"]["texts"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan.json")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-plan")
    parser.add_argument("--rows", type=int, default=1_000_000)
    return parser.parse_args()


if __name__ == "__main__":
    main()
