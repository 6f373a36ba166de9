"""Benchmark (make bench-ops): where one CPU core's time goes inside the model, per operator.

`make bench-peers` times whole runs; this says what bounds them. Every `stride`-th text of the
stdlib corpus (every 4th by default), embedded as one actor lane does (the CPU's least-cost
plan, one single-threaded onnxruntime session), MiniLM fp32 and int8, with onnxruntime's
profiler on. Per export:

- `op_share`: each operator type's share of the time inside the graph;
- `gemm_gops`: the matrix products' rate, counted from each profiled node's shapes
  (2 x rows x K x N per MatMul or DynamicQuantizeMatMul: the feed-forward and output
  projections; the query/key/value projection lives inside (Q)Attention, not counted);
- `gemm_ceiling_gops`: the same operator alone on a 2,048-token batch through each of the
  model's matrix shapes, the best rate of them: the most onnxruntime's kernel gives on this
  core (`gemm_share_of_ceiling` is the first over the second);
- `seconds_if_gemm_at_ceiling`: the profiled time with every counted product at that ceiling,
  the rest unchanged: what the best possible product scheduling could still win.

A run's matrix products already near their ceiling leave nothing for batching or scheduling to
win: only a faster kernel (VNNI or AMX for int8, bfloat16 on AMX) or less arithmetic.

    python bench/ops.py --out bench/results/ops.json                (make bench-ops)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import CORPUS, MINILM, ROOT, exported, host_cpu, load_texts, write_result
from onnx import TensorProto, helper

from workers import Embedder
from workers.model_dir import MODEL_FILE, TOKENIZER_FILE, read_card
from workers.prepare import TextPreparer
from workers.session import OnnxSession

GEMM_OPS = ("MatMul", "DynamicQuantizeMatMul")
# The ceiling's products: a 2,048-token batch (the CPU's budget) through each of MiniLM's
# matrix shapes: attention's 384 -> 384 and the feed-forward's 384 -> 1,536 -> 384.
CEILING_SHAPES = ((2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384))
CEILING_RUNS = 30


def main() -> None:
    args = parse_args()
    texts = load_texts(args.corpus)[:: args.stride]
    result: dict[str, object] = {
        "rows": len(texts),
        "stride": args.stride,
        "model": MINILM,
        "threads": 1,
        "max_batch_tokens": args.max_batch_tokens,
        "cores": os.cpu_count(),
        **host_cpu(),
    }
    for dtype in ("fp32", "int8"):
        path = exported(MINILM, args.models / f"minilm-{dtype}", dtype)
        result[dtype] = profile(path, texts, args.max_batch_tokens, dtype)
    write_result(args.out, result)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ops.json")
    p.add_argument("--models", type=Path, default=ROOT / "build" / "bench-models")
    p.add_argument("--stride", type=int, default=4, help="profile every Nth text of the corpus")
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    return p.parse_args()


class ProfiledSession(OnnxSession):
    """workers/session.py's CPU session, one thread, with onnxruntime's profiler on; counts its
    runs, so the warm-up's can be told from the measured call's."""

    def __init__(self, path: Path, prefix: Path) -> None:
        super().__init__(path, threads=1, profile_prefix=prefix)
        self.runs = 0

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.runs += 1
        return super().run(input_ids, attention_mask)

    def node_events(self, skip_runs: int) -> list[dict]:
        """The profiler's operator events after the first skip_runs runs (ends profiling)."""
        trace = self.end_profiling()
        events = json.loads(trace.read_text())
        trace.unlink()
        runs = sorted(e["ts"] + e["dur"] for e in events if e["name"] == "model_run")
        after = runs[skip_runs - 1] if skip_runs else -1
        return [
            e
            for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > after
        ]


def profile(path: Path, texts: list[str], max_batch_tokens: int, dtype: str) -> dict:
    # A neighbour only ever slows a measurement: the ceiling is the best of one taken before
    # the profiled run and one after it.
    before = ceiling_gops(dtype)
    card = read_card(path)
    preparer = TextPreparer.from_file(path / TOKENIZER_FILE, card)
    with tempfile.TemporaryDirectory() as tmp:
        session = ProfiledSession(path / MODEL_FILE, Path(tmp) / "profile")
        embedder = Embedder(card, preparer, session, max_batch_tokens)
        embedder.embed(texts[:64])  # warm-up: first-call allocations, not profiled below
        warm_up = session.runs
        clock = time.perf_counter()
        tokens = int(embedder.embed(texts).n_tokens.sum())
        seconds = time.perf_counter() - clock
        events = session.node_events(skip_runs=warm_up)
    by_op: Counter[str] = Counter()
    gemm_ops = gemm_us = 0.0
    for event in events:
        op = event["args"]["op_name"]
        by_op[op] += event["dur"]
        if op in GEMM_OPS:
            gemm_ops += gemm_flops(event["args"])
            gemm_us += event["dur"]
    inside = sum(by_op.values())
    gemm = gemm_ops / gemm_us / 1e3
    ceiling = max(before, ceiling_gops(dtype))
    shares = {op: round(us / inside, 4) for op, us in by_op.most_common()}
    at_ceiling = inside - gemm_us * (1 - gemm / ceiling)
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "op_share": {op: share for op, share in shares.items() if share >= 0.001},
        "gemm_gops": round(gemm, 1),
        "gemm_ceiling_gops": round(ceiling, 1),
        "gemm_share_of_ceiling": round(gemm / ceiling, 3),
        "seconds_inside_graph": round(inside / 1e6, 2),
        "seconds_if_gemm_at_ceiling": round(at_ceiling / 1e6, 2),
    }


def gemm_flops(args: dict) -> float:
    """2 x rows x K x N from a profiled product's shapes: its first input [..., K] and its output
    [..., N] (the profiler lists no shapes for weights, which are initializers)."""
    (a,) = args["input_type_shape"][0].values()
    (y,) = args["output_type_shape"][0].values()
    return 2.0 * float(np.prod(a)) * y[-1]


def ceiling_gops(dtype: str) -> float:
    """The GEMM operator alone, one thread, on each of CEILING_SHAPES: the best rate of all, its
    output written into one array bound once (as the graph's arena reuses its buffers)."""
    return max(product_gops(dtype, *shape) for shape in CEILING_SHAPES)


def product_gops(dtype: str, rows: int, k: int, n: int) -> float:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    if dtype == "int8":
        scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
        quantized = np.round(weight / scale).astype(np.int8)
        initializers = [
            helper.make_tensor("w", TensorProto.INT8, [k, n], quantized.tobytes(), raw=True),
            helper.make_tensor("s", TensorProto.FLOAT, [n], scale),
        ]
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["x", "w", "s"], ["y"], domain="com.microsoft"
        )
    else:
        initializers = [helper.make_tensor("w", TensorProto.FLOAT, [k, n], weight.flatten())]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    x = rng.standard_normal((rows, k)).astype(np.float32)
    y = np.empty((rows, n), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float32, [rows, n], y.ctypes.data)
    best = float("inf")
    for _ in range(CEILING_RUNS):
        clock = time.perf_counter()
        session.run_with_iobinding(binding)
        best = min(best, time.perf_counter() - clock)
    return 2.0 * rows * k * n / best / 1e9


if __name__ == "__main__":
    main()
