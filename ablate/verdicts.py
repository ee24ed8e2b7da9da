"""The words for a decision's verdict, the same in the console, report.md/html, the plots and W&B.

A decision (summary.json's `decision`, or one of its `slices`) has `verdict`: decisive | not decisive |
undetermined (summaries written before the third verdict only say `decisive`: true/false).
"""

from __future__ import annotations


def verdict_of(decision: dict) -> str:
    """decisive | not decisive | undetermined."""
    return decision.get("verdict") or ("decisive" if decision.get("decisive") else "not decisive")


def verdict_phrase(decision: dict) -> str:
    """`decisive winner dpo`, `no decisive winner`, `undetermined`, or `not compared` (no comparison was possible)."""
    verdict = verdict_of(decision)
    if verdict == "decisive":
        return f"decisive winner {decision.get('winner')}"
    if verdict == "undetermined":
        return "undetermined"
    return "no decisive winner" if decision.get("comparisons", [None]) else "not compared"
