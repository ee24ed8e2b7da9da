"""Objective-neutral held-out metrics (docs/ARCHITECTURE.md §5), identical for every cell.

The objectives log rewards that mean different things (DPO: β·summed log-ratio; SimPO: β·mean
log-prob), so arms are compared on these definitions instead, computed from the per-pair table
(heldout_pairs.parquet). With S = summed completion log-prob, n = completion tokens, ref = the
adapter-disabled base model, w = chosen, l = rejected.
"""

from __future__ import annotations

import pandas as pd

PAIR_COLUMNS = [
    "pair_id", "slice",
    "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens",
    "ref_chosen_logp", "ref_rejected_logp",
]  # fmt: skip


def outcome_arrays(pairs) -> dict:
    """Per-pair margins and correctness from the per-pair columns (a table or a mapping of arrays).

    The collector's paired tests use these too, on plain arrays: one definition for both.
    """
    chosen, rejected = pairs["chosen_logp"], pairs["rejected_logp"]
    logratio_margin = (chosen - pairs["ref_chosen_logp"]) - (rejected - pairs["ref_rejected_logp"])
    avglogp_margin = chosen / pairs["chosen_tokens"] - rejected / pairs["rejected_tokens"]
    return {
        "logratio_margin": logratio_margin,
        "logratio_correct": logratio_margin > 0,
        "logratio_tie": logratio_margin == 0,
        "avglogp_margin": avglogp_margin,
        "avglogp_correct": avglogp_margin > 0,
        "chosen_logp_shift": (chosen - pairs["ref_chosen_logp"]) / pairs["chosen_tokens"],
    }


def pair_outcomes(pairs) -> pd.DataFrame:
    return pd.DataFrame(outcome_arrays(pairs), index=getattr(pairs, "index", None))


def _summarise(outcomes: pd.DataFrame, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/pairs": int(len(outcomes)),
        f"{prefix}/logratio_margin": float(outcomes.logratio_margin.mean()),
        f"{prefix}/logratio_accuracy": float(outcomes.logratio_correct.mean()),
        f"{prefix}/logratio_ties": int(outcomes.logratio_tie.sum()),  # a count: ties are neither right nor wrong
        f"{prefix}/avglogp_margin": float(outcomes.avglogp_margin.mean()),
        f"{prefix}/avglogp_accuracy": float(outcomes.avglogp_correct.mean()),
        f"{prefix}/chosen_logp_shift": float(outcomes.chosen_logp_shift.mean()),
    }


SPLITS = ("validation", "test")  # the `split` column, present only when data.validation_pairs is set


def heldout_metrics(pairs: pd.DataFrame) -> dict[str, float]:
    """`heldout/<metric>` over all pairs, plus `heldout/<slice>/<metric>` for each tagged slice.

    With a validation/test split, also `validation/...` and `test/...` (each with its slices): a
    prefix of its own, so the collector never mistakes a split for a slice.
    """
    outcomes = pair_outcomes(pairs)
    metrics = _with_slices(outcomes, pairs, "heldout")
    if "split" in pairs:
        for split in SPLITS:
            part = (pairs["split"] == split).to_numpy()
            metrics |= _with_slices(outcomes[part], pairs[part], split)
    return metrics


def _with_slices(outcomes: pd.DataFrame, pairs: pd.DataFrame, prefix: str) -> dict[str, float]:
    metrics = _summarise(outcomes, prefix)
    slices = pairs["slice"].dropna()
    for name in sorted(slices.unique()):
        metrics |= _summarise(outcomes[(pairs["slice"] == name).to_numpy()], f"{prefix}/{name}")
    return metrics
