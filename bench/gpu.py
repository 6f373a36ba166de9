"""Benchmark (make bench-gpu; make gpu-check runs it): gte-large's shape in fp16 on one GPU.

A random-weight BERT with gte-large's exact shape (export/stand_in.py; compute does not depend on
the weights) is exported to fp16 once per attention layout (export/optimize.py), from one trace.
Documents of about 256 tokens are built by joining docstrings of the stdlib corpus in shuffled
order (common.docs_of_tokens: 99.8% distinct). In one run, on one GPU:

- `attention_kernel`: the kernel onnxruntime runs for each layout's attention nodes, from its
  own debug report (bench/attention_kernels.py, in a child process);
- `layouts`: the bare session (`Embedder.embed`: tokenize, batch, infer, pool) per layout on
  the first `--layout-docs` documents; the fastest is used below;
- `sentence_transformers`: the stand-in on CUDA in fp16 (`.half()`), its default attention and
  batch size, `encode` timed after a warm-up call;
- `bare_session`: the fastest layout on every document;
- `embedpipe_run`: `embedpipe run` end to end: Parquet shards in, part files out, one actor on
  the GPU, read to _SUCCESS; its Ray and model start-up is reported apart and not counted.

tokens/s counts the tokens embedded ([CLS] and [SEP] included, as report.json does), the same
count for all. `speedup` is end-to-end tokens/s over sentence-transformers'. `parity` is each
export's min cosine to the fp32 reference (sentence-transformers on the CPU), measured on the
device. The result file is rewritten after every step, so a run cut short keeps what it measured.

    python bench/gpu.py --out bench/results/gpu.json                  (make bench-gpu)
    python bench/gpu.py --device cpu --shape tiny --docs 64 --out /tmp/gpu.json   (a smoke run)
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from attention_kernels import summarize
from common import (
    CORPUS,
    ROOT,
    docs_of_tokens,
    load_texts,
    stand_in,
    write_conf,
    write_result,
    write_shards,
)

from export.exporter import export_layouts
from workers import Embedder, EmbedOptions
from workers.model_dir import (
    ATTENTION_LAYOUTS,
    CUDA_ONLY_LAYOUTS,
    TOKENIZER_FILE,
    ModelDirError,
    read_card,
)
from workers.prepare import TextPreparer


def main() -> None:
    args = parse_args()
    check_device(args.device)
    result: dict[str, Any] = {"device": describe_device(args.device)}
    save = lambda: write_result(args.out, result)  # noqa: E731 (after every step)
    clock = time.perf_counter()
    st_dir = stand_in(args.work / f"{args.shape}-st", args.shape)
    dirs, failed = exports(st_dir, args)
    result["model"] = f"random-weight BERT, {args.shape} shape, fp16"
    result["export_seconds"] = round(time.perf_counter() - clock, 1)
    result["parity"] = {layout: read_card(d).parity for layout, d in dirs.items()} | failed
    save()
    result["attention_kernel"] = attention_kernels(dirs, args.device)
    save()
    first = next(iter(dirs.values()))
    preparer = TextPreparer.from_file(first / TOKENIZER_FILE, read_card(first))
    docs = docs_of_tokens(load_texts(args.corpus), preparer, args.docs)
    tokens = int(preparer.prepare(docs, EmbedOptions()).n_tokens.sum())  # no inference
    result |= {
        "docs": len(docs),
        "tokens": tokens,
        "mean_tokens_per_doc": round(tokens / len(docs), 1),
        "max_batch_tokens": args.batch_tokens,
    }
    result["layouts"] = {}
    for layout, model_dir in dirs.items():
        some = docs[: args.layout_docs]
        result["layouts"][layout] = timed(time_bare(model_dir, some, args), some, preparer)
        save()
    fastest = max(result["layouts"], key=lambda k: result["layouts"][k]["tokens_per_s"])
    result["fastest_layout"] = fastest
    timings = {"sentence_transformers": time_st(st_dir, docs, args.device)}
    result["sentence_transformers"] = figures(timings["sentence_transformers"], tokens, docs)
    save()
    timings["bare_session"] = time_bare(dirs[fastest], docs, args)
    result["bare_session"] = figures(timings["bare_session"], tokens, docs)
    result["tokens_per_s_bare"] = result["bare_session"]["tokens_per_s"]
    result["speedup_bare"] = round(timings["sentence_transformers"] / timings["bare_session"], 3)
    save()
    seconds, report = time_run(dirs[fastest], docs, args)
    result["embedpipe_run"] = figures(seconds, tokens, docs) | run_details(report)
    result["tokens_per_s"] = result["embedpipe_run"]["tokens_per_s"]
    result["speedup"] = round(timings["sentence_transformers"] / seconds, 3)
    result["device_idle_share"] = report["device_idle_share"]
    result["parity_min_cosine"] = result["parity"][fastest].get("min_cosine")
    save()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-gpu")
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--layout-docs", type=int, default=5000, help="documents per layout")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shape", choices=["gte-large", "tiny"], default="gte-large")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument(
        "--layouts", default=",".join(ATTENTION_LAYOUTS), help="attention layouts to compare"
    )
    args = parser.parse_args()
    args.layouts = [name for name in args.layouts.split(",") if name]
    if args.device == "cpu":  # their kernels are CUDA only: nothing to time on a CPU
        args.layouts = [name for name in args.layouts if name not in CUDA_ONLY_LAYOUTS]
    return args


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench-gpu needs a CUDA GPU (torch sees none); --device cpu smoke-tests")


def exports(st_dir: Path, args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    """The fp16 export of each layout, reusing those an earlier run of this bench made, and
    why each layout that could not be exported failed."""
    outs = {layout: args.work / f"{args.shape}-fp16-{layout}" for layout in args.layouts}
    missing = {layout: out for layout, out in outs.items() if not is_export(out, st_dir)}
    failed: dict[str, str] = {}
    if missing:
        made = export_layouts(str(st_dir), missing, "fp16", force=True, keep_going=True)
        failed = {layout: f"export failed: {err}" for layout, err in made.items() if is_error(err)}
    return {k: v for k, v in outs.items() if k not in failed}, failed


def is_error(made: object) -> bool:
    return isinstance(made, Exception)


def is_export(out: Path, st_dir: Path) -> bool:
    try:
        return read_card(out).source == str(st_dir)
    except ModelDirError:
        return False


def attention_kernels(dirs: dict[str, Path], device: str) -> dict[str, Any]:
    """Per layout, what bench/attention_kernels.py reports (child processes: onnxruntime reads
    its debug switch once per process, and prints on every run once it is on)."""
    found: dict[str, Any] = {}
    script = Path(__file__).with_name("attention_kernels.py")
    env = {**os.environ, "ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"}
    for layout, model_dir in dirs.items():
        done = subprocess.run(
            [sys.executable, str(script), str(model_dir), device],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )
        if done.returncode == 0:
            found[layout] = summarize(done.stdout)
        else:
            found[layout] = {"error": (done.stderr or done.stdout)[-2000:]}
    return found


def timed(seconds: float, docs: list[str], preparer: Any) -> dict[str, Any]:
    tokens = int(preparer.prepare(docs, EmbedOptions()).n_tokens.sum())
    return figures(seconds, tokens, docs)


def figures(seconds: float, tokens: int, docs: list[str]) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds),
        "docs_per_s": round(len(docs) / seconds, 1),
    }


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
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # give the memory back before onnxruntime's turn
    return seconds


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_bare(model_dir: Path, docs: list[str], args: argparse.Namespace) -> float:
    embedder = Embedder.load(model_dir, device=args.device, max_batch_tokens=args.batch_tokens)
    embedder.embed(docs[:256])
    clock = time.perf_counter()
    embedder.embed(docs)
    seconds = time.perf_counter() - clock
    del embedder
    gc.collect()  # the session's device memory goes back before the next one loads
    return seconds


def time_run(
    model_dir: Path, docs: list[str], args: argparse.Namespace
) -> tuple[float, dict[str, Any]]:
    from pipelines.batch.run import run_job
    from pipelines.config import load_config

    corpus, out = write_shards(docs, len(docs), 8, args.work / "corpus"), args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    conf = write_conf(
        out,
        model_dir,
        corpus,
        2000,
        f"embedding: {{max_batch_tokens: {args.batch_tokens}}}",
        f"workers: {{device: {args.device}, num_actors: 1, cpus_per_actor: {actor_cpus()}}}",
        # Every document through the model, as sentence-transformers does: the count is the same
        # for all, whatever texts the corpus happens to repeat.
        "run: {use_cache: false}",
        dtype="fp16",
    )
    report = run_job(load_config(conf))
    assert report["tasks_done"] == report["tasks_total"], report
    embedded = report["rows_embedded"]
    assert embedded == len(docs), f"the run embedded {embedded} of {len(docs)} documents"
    return float(report["seconds"] - report["seconds_startup"]), report


def actor_cpus() -> int:
    """The one GPU actor takes the machine's cores but two (the driver's and Ray's): its
    tokenizer threads follow cpus_per_actor, and with 4 of the H200 machine's 16 cores the
    run fed the GPU 305,312 tokens/s where the bare session, on all 16, did 600,421."""
    return max(1, len(os.sched_getaffinity(0)) - 2)


def run_details(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("seconds_startup", "device_idle_share", "seconds_per_stage", "tasks_total")
    return {key: report[key] for key in keep if key in report}


def describe_device(device: str) -> dict[str, str]:
    if device != "cuda":
        return {"kind": device}
    import torch

    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    smi = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return {"kind": "cuda", "gpu": torch.cuda.get_device_name(0), "nvidia_smi": smi}


if __name__ == "__main__":
    main()
