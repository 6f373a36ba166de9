"""A demo corpus from this Python's own standard library: real English text of varied length,
nothing downloaded. Docstrings are found by parsing the sources with `ast`, never by importing
them (some stdlib modules act on import: `antigravity` opens a browser).

Shards come in all three input formats (Parquet, JSONL, CSV), so the demo exercises each reader.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import polars as pl

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


def docstrings(root: Path) -> Iterator[dict[str, str]]:
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIP_DIRS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or use another encoding
        yield from _from_tree(tree, relative.as_posix())


def _from_tree(tree: ast.Module, module: str) -> Iterator[dict[str, str]]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds) and (text := ast.get_docstring(node)):
            name = getattr(node, "name", "<module>")
            line = getattr(node, "lineno", 0)
            yield {"id": f"{module}:{line}:{name}", "text": text, "module": module}


def build_demo_corpus(out: Path, limit: int = 6000, shards: int = 6) -> int:
    """Writes the shards under out; returns the row count."""
    rows = list(docstrings(Path(sysconfig.get_paths()["stdlib"])))[:limit]
    out.mkdir(parents=True, exist_ok=True)
    for n in range(shards):
        part = rows[n::shards]
        stem = out / f"stdlib-{n:02d}"
        if n % 3 == 0:
            pl.DataFrame(part).write_parquet(stem.with_suffix(".parquet"))
        elif n % 3 == 1:
            stem.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        else:
            pl.DataFrame(part).write_csv(stem.with_suffix(".csv"))
    return len(rows)
