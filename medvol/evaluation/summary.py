"""Evaluation summaries as JSON-safe values and as the few lines ``medvol evaluate`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few plain-text lines: what was evaluated, each headline metric with its CI."""
    level = f"{round(100 * summary['bootstrap'].get('confidence', 0.95))}% CI"
    failed = len(summary.get("errors") or [])
    lines = [
        f"{summary['run']}: {summary['task']}, checkpoint {summary['checkpoint']} "
        f"(epoch {summary['epoch']}), split {summary['split']}: {summary['n_cases']} case(s) scored, "
        f"{failed} not"
    ]
    metrics = summary.get("metrics") or {}
    if summary["task"] == "classification":
        for name, entry in metrics.items():
            which = level if entry.get("low") is not None else "no CI, see summary.json"
            lines.append(
                f"  {name:<18} {format_interval(entry['estimate'], entry['low'], entry['high'])}  ({which})"
            )
        return "\n".join(lines)
    names = summary.get("class_names") or {}
    for value, entry in metrics.items():
        parts = [
            f"{label} {format_interval(entry[key]['mean'], entry[key]['low'], entry[key]['high'])}"
            for key, label in (("dice", "Dice"), ("hd95_mm", "HD95 mm"), ("assd_mm", "ASSD mm"))
        ]
        which = level if entry["dice"].get("low") is not None else "no CI: fewer than 3 cases"
        lines.append(f"  {names.get(value, value):<12} " + "  ".join(parts) + f"  ({which})")
    return "\n".join(lines)


def format_interval(estimate: Any, low: Any, high: Any) -> str:
    """``estimate [low, high]`` to 4 decimals; the estimate alone without bounds; ``undefined``."""
    if estimate is None:
        return "undefined"
    if low is None or high is None:
        return f"{estimate:.4f}"
    return f"{estimate:.4f} [{low:.4f}, {high:.4f}]"
