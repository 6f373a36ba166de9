"""The plan on one screen: the figures of estimate.py in words, with their margins."""

from __future__ import annotations

from typing import Any


def plan_lines(plan: dict[str, Any], config_path: str) -> list[str]:
    est, tokens, sample = plan["estimate"], plan["tokens"], plan["sample"]
    lines = [f"plan for {config_path}: nothing written to {plan['config']['output']}"]
    lines.append(f"rows: {plan['rows']:,} in {plan['tasks']:,} task(s)")
    lines += [f"  {_format(fmt, c)}" for fmt, c in plan["inputs"].items()]
    lines += [f"  cannot be read: {err}" for err in plan["errors"]]
    lines.append("rejects: " + _rejects(plan["rejects"]))
    exact = "every text: exact" if sample["exact"] else "estimates are +- their 95% margin"
    lines.append(
        f"sample: {sample['texts']:,} distinct texts standing for {sample['rows']:,} rows ({exact})"
    )
    lines.append(
        f"tokens per text: p50 {tokens['p50']:,}, p90 {tokens['p90']:,}, p99 {tokens['p99']:,}, "
        f"max {tokens['max']:,} in the sample (max_seq_length {tokens['max_seq_length']:,})"
    )
    verb = {"truncate": "truncated", "reject": "rejected", "chunk": "chunked"}
    lines.append(
        f"over max_seq_length: {_share(tokens['over_max_share'])} of rows, "
        f"{verb[tokens['long_texts']]}"
    )
    repeats = plan["repeats"]
    lines.append(f"repeated texts: {_share(repeats['text_share'])} of rows")
    if plan["cache"] is not None:
        lines.append(f"already in run.cache_from: {_share(plan['cache']['share'])}")
    lines.append(f"model tokens: {_count(est['model_tokens'])} (after repeats and cache)")
    lines.append(_time(est))
    lines.append(
        f"output: ~{est['rows_written']:,} rows x {est['bytes_per_row']:,.0f} bytes = "
        f"~{_bytes(est['output_bytes'])} (kept columns not counted)"
    )
    return lines


def _format(fmt: str, counts: dict[str, int]) -> str:
    bad = f", {counts['unreadable']} unreadable" if counts["unreadable"] else ""
    return (
        f"{fmt} {counts['files']:,} file(s), {counts['rows']:,} rows, "
        f"{counts['tasks']:,} task(s), {_bytes(counts['bytes'])}{bad}"
    )


def _rejects(rejects: dict[str, Any]) -> str:
    parts = []
    for key, value in rejects.items():
        if isinstance(value, dict):
            if value["value"] or value["margin"]:
                parts.append(f"{key} {_count(value)}")
        elif value:
            parts.append(f"{key} {value:,}")
    return ", ".join(parts) or "none seen"


def _share(estimate: dict[str, float]) -> str:
    value, margin = estimate["value"] * 100, estimate["margin"] * 100
    return f"{value:.1f}%" + (f" +- {margin:.1f}%" if margin else "")


def _count(estimate: dict[str, float]) -> str:
    value, margin = estimate["value"], estimate["margin"]
    return f"~{value:,.0f}" + (f" +- {margin:,.0f}" if margin else "")


def _time(est: dict[str, Any]) -> str:
    if est["wall_s"] is None:
        return "wall time: unknown (the model could not be timed here; pass --tokens-per-s)"
    return (
        f"wall time: ~{_seconds(est['wall_s'])} on {est['actors']} actor(s) at "
        f"{est['tokens_per_s']:,.0f} tokens/s each ({est['tokens_per_s_source']}); "
        "embedding only, start-up not included"
    )


def _seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"
