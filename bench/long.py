"""Benchmark (make bench-long): long documents chunked against truncated.

The stdlib docstrings joined into ~3,000-token documents (bench/common.py's docs_of_tokens), run
through `embedpipe run` three ways, each a fresh process with one actor on every core and
all-MiniLM-L6-v2 (256 tokens): truncated (the default: each document's first 254 tokens),
chunked (`embedding.chunking.tokens=256`, a row per chunk), and pooled (`pool=mean`, a row per
document). Speed is tokens the model embedded per second of the run after start-up: chunking
embeds every token, truncation a twelfth of them, so what is compared is the cost per token
(`tokens_per_s_ratio`, chunked / truncated; the target is about 1: the extra cost should be the
extra tokens, not more).

Retrieval: for each document, a question answered only in its tail: the first sentence of a
paragraph that starts beyond the truncation window and appears in no other document. Each
output is searched (cosine, numpy) with the question's vector; a chunked output's chunks are
ranked and then grouped by document. recall@10: the share of questions whose document is among
the 10 best documents.

    python bench/long.py --out bench/results/long.json                  (make bench-long)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
from common import (
    CORPUS,
    MINILM,
    ROOT,
    docs_of_tokens,
    exported,
    load_texts,
    run_config,
    write_conf,
    write_result,
)

from workers import Embedder, EmbedOptions
from workers.model_dir import TOKENIZER_FILE, read_card
from workers.prepare import TextPreparer

K = 10
WAYS = {
    "truncated": (),
    "chunked": ("embedding.chunking.tokens=256",),
    "pooled": ("embedding.chunking.tokens=256", "embedding.chunking.pool=mean"),
}


def main() -> None:
    args = parse_args()
    model = exported(MINILM, ROOT / "build" / "bench-models" / "minilm-fp32")
    preparer = TextPreparer.from_file(model / TOKENIZER_FILE, read_card(model))
    texts = list(dict.fromkeys(t for t in load_texts(args.corpus) if t.strip()))
    docs = docs_of_tokens(texts, preparer, args.docs, tokens=args.tokens)
    questions = tail_questions(docs, preparer)
    corpus = write_docs(docs, args.work / "corpus")
    embedder = Embedder.load(model)
    asked = embedder.embed([q for _, q in questions], EmbedOptions()).vectors
    result: dict = {
        "model": "all-MiniLM-L6-v2 fp32, max_seq_length 256",
        "docs": len(docs),
        "tokens_per_doc": round(
            float(np.mean(preparer.prepare(docs, EmbedOptions(truncate=False)).n_tokens)), 1
        ),
        "questions": len(questions),
        "threads": args.threads,
    }
    for way, overrides in WAYS.items():
        out = args.work / f"out-{way}"
        report = run(model, corpus, out, args.threads, overrides)
        embed_s = report["seconds"] - report["seconds_startup"]
        result[way] = {
            "tokens": report["tokens"],
            "rows": report.get("chunks_written") or report["rows_embedded"],
            "seconds_after_startup": round(embed_s, 2),
            "tokens_per_s": round(report["tokens"] / embed_s, 1),
            "recall_at_10": recall(out, questions, asked),
        }
        print(way, result[way], file=sys.stderr)
    result["tokens_per_s_ratio"] = round(
        result["chunked"]["tokens_per_s"] / result["truncated"]["tokens_per_s"], 3
    )
    result["target"] = {"tokens_per_s_ratio": "about 1 (the extra cost is the extra tokens)"}
    write_result(args.out, result)


def tail_questions(docs: list[str], preparer: TextPreparer) -> list[tuple[int, str]]:
    """(document, question) pairs: per document, the first sentence of a paragraph wholly past
    what truncation keeps, found in no other document; documents without one are skipped."""
    rng = random.Random(0)
    found = []
    for d, doc in enumerate(docs):
        spans = preparer.token_spans(doc)
        cut = int(spans.stops[min(253, len(spans) - 1)])  # max_seq_length 256 less 2 specials
        paragraphs = [p for p in doc[cut:].split("\n\n")[1:] if len(p) > 60]
        rng.shuffle(paragraphs)
        for paragraph in paragraphs:
            question = paragraph.strip().split(". ")[0][:200]
            alone = sum(question in other for other in docs) == 1
            if len(question) >= 30 and alone and doc.find(question) > cut:
                found.append((d, question))
                break
    return found


def write_docs(docs: list[str], root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ids = [f"doc-{d:04d}" for d in range(len(docs))]
    pl.DataFrame({"id": ids, "text": docs}).write_parquet(root / "docs.parquet")
    return root


def run(model: Path, corpus: Path, out: Path, threads: int, overrides: tuple[str, ...]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    conf = write_conf(
        out,
        model,
        corpus,
        50,
        "embedding: {max_batch_tokens: 2048}",
        f"workers: {{device: cpu, cpus_per_actor: {threads}, num_actors: 1}}",
        "run: {use_cache: false}",
    )
    report: dict = run_config(conf, *overrides)["report"]
    return report


def recall(out: Path, questions: list[tuple[int, str]], asked: np.ndarray) -> float:
    """Share of questions whose document is among the K best documents (best chunk first)."""
    rows = pl.read_parquet(out / "*.parquet", columns=["id", "embedding"])
    vectors = np.stack(rows["embedding"].to_numpy())
    ids = rows["id"].to_list()
    hits = 0
    for (d, _), q in zip(questions, asked, strict=True):
        ranked = np.argsort(-(vectors @ q), kind="stable")
        best: list[str] = []
        for i in ranked.tolist():
            if ids[i] not in best:
                best.append(ids[i])
                if len(best) == K:
                    break
        hits += f"doc-{d:04d}" in best
    return round(hits / len(questions), 3)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long.json")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-long")
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--tokens", type=int, default=3000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args()


if __name__ == "__main__":
    main()
