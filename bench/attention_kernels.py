"""Which CUDA kernel onnxruntime runs for a model's attention nodes, at a few sequence lengths.

Run with ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 (bench/gpu.py does): onnxruntime then prints,
for every attention node it runs, a line such as `Operator=Attention Node=Attention_0
DataType=fp16 SdpaKernel=MATH`. This script runs one padded batch per length, printing a marker
line before each, and `summarize` turns the captured output into counts per length.

    ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 python bench/attention_kernels.py MODEL_DIR [DEVICE]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARK = "embedpipe-length"
LENGTHS = (64, 256, 512)
ROWS = 8
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"Operator=(\S+).*SdpaKernel=(\S+)")


def run(model_dir: Path, device: str = "cuda") -> None:
    from workers.model_dir import MODEL_FILE, read_card
    from workers.session import OnnxSession

    card = read_card(model_dir)
    session = OnnxSession(
        model_dir / MODEL_FILE, device=device, exact_fp32=False, attention=card.attention
    )
    for length in LENGTHS:
        ids = np.full((ROWS, length), 1000, dtype=np.int64)
        mask = np.ones_like(ids)
        for row in range(ROWS):  # right padding, as the embedder's batches have
            mask[row, length - row * length // (2 * ROWS) :] = 0
        ids[mask == 0] = 0
        print(f"{MARK} {length}", flush=True)
        session.run(ids, mask)
    sys.stdout.flush()


def summarize(stdout: str) -> dict[str, Any]:
    """Counts of (operator, kernel) per length from the captured output, and the kernel most
    attention nodes ran."""
    by_length: dict[str, Counter[str]] = {}
    options = ""
    current = None
    for raw in stdout.splitlines():
        line = _ANSI.sub("", raw).strip()
        if line.startswith(MARK):
            current = line.split()[1]
            by_length[current] = Counter()
        elif line.startswith("AttentionKernelOptions:"):
            options = line
        elif current and (found := _LINE.search(line)):
            by_length[current][f"{found.group(1)}:{found.group(2)}"] += 1
    total = sum(by_length.values(), Counter())
    return {
        "kernel": total.most_common(1)[0][0] if total else "none reported",
        "by_length": {k: dict(v) for k, v in by_length.items()},
        "options": options,
    }


if __name__ == "__main__":
    run(Path(sys.argv[1]), *sys.argv[2:])
