"""The words for a decision's verdict, the same in the console, report.md/html, the plots and W&B.

A decision (summary.json's `decision`, or one of its `slices`) has `verdict`: decisive | exploratory |
not decisive | undetermined (summaries written before the third verdict only say `decisive`: true/false).
"exploratory": the rule's conditions hold, but the decision may not claim a winner (a secondary scope,
another metric than the sweep's primary test, a test whose alpha is spent): its `lead` is named, never
as a winner.
"""

from __future__ import annotations


def verdict_of(decision: dict) -> str:
    """decisive | exploratory | not decisive | undetermined."""
    return decision.get("verdict") or ("decisive" if decision.get("decisive") else "not decisive")


def verdict_phrase(decision: dict) -> str:
    """`decisive winner dpo`, `exploratory lead dpo`, `no decisive winner`, `undetermined`, or `not compared`."""
    verdict = verdict_of(decision)
    if verdict == "decisive":
        return f"decisive winner {decision.get('winner')}"
    if verdict == "exploratory":
        return f"exploratory lead {decision.get('lead')} (not a decisive claim)"
    if verdict == "undetermined":
        return "undetermined"
    return "no decisive winner" if decision.get("comparisons", [None]) else "not compared"
