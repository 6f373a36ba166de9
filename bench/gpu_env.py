"""The GPU check's first figures: GPU, driver, CUDA, cuDNN and library versions, and which
onnxruntime build is imported with its providers (python bench/gpu_env.py OUT.json)."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
import sys

LIBRARIES = (
    "onnxruntime-gpu",
    "onnxruntime",
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "ray",
    "polars",
    "pyarrow",
    "numpy",
    "onnx",
    "nvidia-cudnn-cu13",
)


def report() -> dict[str, object]:
    import onnxruntime
    import torch

    found: dict[str, object] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    cuda = torch.cuda.is_available()
    found |= {
        "onnxruntime_imported": f"{onnxruntime.__version__} from {onnxruntime.__file__}",
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "nvidia_smi": smi(),
    }
    return found


def smi() -> str | None:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    found = report()
    with open(sys.argv[1], "w") as f:
        json.dump(found, f, indent=2)
    print(json.dumps(found, indent=2))
