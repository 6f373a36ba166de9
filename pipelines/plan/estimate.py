"""From the pass over the input to the plan's figures: token lengths, the share over
max_seq_length, repeats, what cache_from holds, the model's tokens, the wall time and the
output's size, each estimate with its 95% margin (zero where the sample is the whole input).

Every share is a ratio over the sampled texts weighted by their rows (input_pass.py): its
margin is 1.96 standard errors of a ratio estimator over a sample of distinct texts, which
counts that a text's rows come into the sample together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.plan.input_pass import ID_REPEATS, InputPass
from pipelines.plan.text_facts import TextFacts

Z95 = 1.96


@dataclass(frozen=True)
class Estimate:
    value: float
    margin: float  # 95%: the value is within +- margin of the whole input's

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {"value": round(self.value, digits), "margin": round(self.margin, digits)}


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # one actor's
    source: str  # "given" (--tokens-per-s) or how it was calibrated


@dataclass(frozen=True)
class Sampled:
    """The sampled texts as arrays: rows each stands for, its facts, what the cache holds."""

    rows: np.ndarray  # (n,) int64
    lengths: np.ndarray
    model_tokens: np.ndarray
    chunks: np.ndarray
    cached_chunks: np.ndarray  # of its chunks (or its one text), those cache_from holds

    @classmethod
    def of(cls, found: InputPass, cached: set[bytes]) -> Sampled:
        keys = [k for k in found.facts if k in found.texts.counts]
        facts: list[TextFacts] = [found.facts[k] for k in keys]  # type: ignore[misc]
        return cls(
            rows=np.array([found.texts.counts[k] for k in keys], np.int64),
            lengths=np.array([f.length for f in facts], np.int64),
            model_tokens=np.array([f.model_tokens for f in facts], np.int64),
            chunks=np.array([f.chunks for f in facts], np.int64),
            cached_chunks=np.array([sum(h in cached for h in f.hashes) for f in facts], np.int64),
        )

    def share(self, per_text: np.ndarray, exact: bool) -> Estimate:
        """The row-weighted mean of a per-text value."""
        return ratio(self.rows * per_text, self.rows, exact)

    def quantile(self, q: float) -> int:
        order = np.argsort(self.lengths, kind="stable")
        cumulative = np.cumsum(self.rows[order])
        at = int(np.searchsorted(cumulative, q * cumulative[-1]))
        return int(self.lengths[order][min(at, len(order) - 1)])


def ratio(y: np.ndarray, x: np.ndarray, exact: bool) -> Estimate:
    """sum(y) / sum(x) over the sample, with the 95% margin of that ratio estimator."""
    if len(x) == 0 or x.sum() == 0:
        return Estimate(0.0, 0.0)
    r = float(y.sum() / x.sum())
    n = len(x)
    if exact or n < 2:
        return Estimate(r, 0.0)
    residual = y - r * x
    se = float(np.sqrt((residual**2).sum() / (n * (n - 1))) / x.mean())
    return Estimate(r, Z95 * se)


def id_repeats(found: InputPass) -> Estimate:
    """The share of rows with an id whose id an earlier row has (a reject row each)."""
    counts = np.array(list(found.ids.counts.values()), np.int64)
    return ratio(counts - 1, counts, found.ids.exact)


def figures(
    found: InputPass,
    sampled: Sampled,
    settings: dict[str, Any],
    throughput: Throughput | None,
    actors: int,
    bytes_per_row: float,
) -> dict[str, Any]:
    """The plan's figures (README: "embedpipe plan"); settings: max_seq_length, long_texts
    (truncate, reject or chunk), chunked (pool none), use_cache, cache (whether cache_from
    was given)."""
    exact = found.texts.exact
    over = sampled.share((sampled.lengths > settings["max_seq_length"]).astype(float), exact)
    ids = id_repeats(found)
    if found.ids.k is None:  # the pass rejected them, row by row
        live, id_rejects = float(found.rows_live), Estimate(found.rejects.get(ID_REPEATS, 0), 0)
    else:  # rows an id repeat does not reject, estimated
        live = found.rows_live * (1 - ids.value)
        id_rejects = Estimate(ids.value * found.rows_live, ids.margin * found.rows_live)
    rejecting = settings["long_texts"] == "reject"
    too_long = Estimate(over.value * live, over.margin * live) if rejecting else Estimate(0, 0)
    chunks = np.maximum(sampled.chunks, 0)
    rows_out = live - too_long.value
    if settings["chunked"]:
        rows_out = sampled.share(chunks.astype(float), exact).value * live
    tokens = model_tokens(sampled, settings["use_cache"], exact, live)
    cache = ratio(sampled.rows * sampled.cached_chunks, sampled.rows * chunks, exact)
    return {
        "inputs": {fmt: dataclasses.asdict(c) for fmt, c in sorted(found.formats.items())},
        "rows": sum(c.rows for c in found.formats.values()),
        "tasks": sum(c.tasks for c in found.formats.values()),
        "rejects": {
            **{_reject_key(k): v for k, v in sorted(found.rejects.items()) if k != ID_REPEATS},
            "repeated_id": id_rejects.as_dict(0),
            "too_long": too_long.as_dict(0),
        },
        "sample": {"texts": len(sampled.rows), "rows": int(sampled.rows.sum()), "exact": exact},
        "tokens": _lengths(sampled)
        | {
            "max_seq_length": settings["max_seq_length"],
            "over_max_share": over.as_dict(),
            "long_texts": settings["long_texts"],
        },
        "repeats": {
            "text_share": ratio(sampled.rows - 1, sampled.rows, exact).as_dict(),
            "id_share": ids.as_dict(),
        },
        "cache": {"share": cache.as_dict()} if settings["cache"] else None,
        "estimate": _estimate(tokens, rows_out, throughput, actors, bytes_per_row),
        "errors": found.errors,
    }


def model_tokens(sampled: Sampled, use_cache: bool, exact: bool, live: float) -> Estimate:
    """What the model runs over the `live` rows: under use_cache each distinct text (or chunk)
    once, less what the cache holds; else every row's."""
    if use_cache:
        held = sampled.cached_chunks / np.maximum(sampled.chunks, 1)  # of a text's tokens
        per_row = ratio(sampled.model_tokens * (1 - held), sampled.rows, exact)
    else:
        per_row = sampled.share(sampled.model_tokens.astype(float), exact)
    return Estimate(per_row.value * live, per_row.margin * live)


def _lengths(sampled: Sampled) -> dict[str, int]:
    if not len(sampled.rows):
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    return {
        "p50": sampled.quantile(0.5),
        "p90": sampled.quantile(0.9),
        "p99": sampled.quantile(0.99),
        "max": int(sampled.lengths.max()),
    }


def _estimate(
    tokens: Estimate,
    rows_out: float,
    throughput: Throughput | None,
    actors: int,
    bytes_per_row: float,
) -> dict[str, Any]:
    wall = None
    if throughput is not None and throughput.tokens_per_s > 0:
        wall = round(tokens.value / (throughput.tokens_per_s * max(actors, 1)), 1)
    return {
        "rows_written": round(rows_out),
        "model_tokens": tokens.as_dict(0),
        "tokens_per_s": None if throughput is None else round(throughput.tokens_per_s, 1),
        "tokens_per_s_source": None if throughput is None else throughput.source,
        "actors": actors,
        "wall_s": wall,
        "bytes_per_row": round(bytes_per_row, 1),
        "output_bytes": round(rows_out * bytes_per_row),
    }


def _reject_key(reason: str) -> str:
    """A reject reason as a JSON key: 'text is null' -> null_text."""
    return {
        "id is null": "null_id",
        "text is null": "null_text",
        "text is empty": "empty_text",
        "text is only whitespace": "whitespace_text",
        "text is not a string": "not_text",
    }.get(reason, reason.replace(" ", "_"))
