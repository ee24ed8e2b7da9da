"""A/A check on a real sweep: one recipe trained with many seeds, its seeds split into two pretend arms.

Both "arms" are the same recipe, so every "decisive" verdict is a false winner. Every way of splitting the
seeds into two disjoint groups of k is tried (or `--max-splits` of them, drawn at random) and decided with
the collector's own rule (ablate.collect.decide.compare_arms) on all held-out pairs and on each slice.

    python -m ablate -m objective=dpo seed=0,1,2,3,4,5,6,7,8,9,10,11 hydra.sweep.dir=outputs/aa12
    python benchmarks/aa_splits.py outputs/aa12 --k 1 3

The splits share seeds, so they are not independent draws: read the rate as a check, not as a precise
estimate (the simulation in tests/test_calibration.py gives the precise one).
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np
from omegaconf import OmegaConf

from ablate.collect.decide import compare_arms, evidence, scope_strata
from ablate.collect.load import load_sweep
from ablate.config import SelectConfig


def splits(seeds: list[int], k: int, max_splits: int, rng: random.Random):
    """Unordered pairs of disjoint k-seed groups."""
    all_splits = [(a, b) for a in itertools.combinations(seeds, k)
                  for b in itertools.combinations([s for s in seeds if s not in a], k) if a < b]
    rng.shuffle(all_splits)
    return all_splits[:max_splits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3], help="seeds per pretend arm")
    parser.add_argument("--max-splits", type=int, default=2000)
    parser.add_argument("--metric", default="avglogp_accuracy")
    args = parser.parse_args()
    select = OmegaConf.structured(SelectConfig)
    select.metric = args.metric
    sweep = load_sweep(args.sweep_dir)
    ev = evidence(sweep, args.metric)
    if len(ev["values"]) != 1 or ev["missing"]:
        raise SystemExit(f"{args.sweep_dir}: expected one recipe with readable seeds, got arms "
                         f"{sorted(ev['values'])} (missing: {ev['missing']})")
    ((seeds, matrix),) = ev["values"].values()
    row = {s: matrix[i] for i, s in enumerate(seeds)}
    scopes = [None] + sorted({str(s) for s in ev["slices"] if s is not None})
    print(f"{args.sweep_dir}: {len(seeds)} seeds, {matrix.shape[1]} held-out pairs, metric {args.metric}, "
          f"alpha {select.alpha}, min_seeds {select.min_seeds}")
    for k in args.k:
        chosen = splits(sorted(seeds), k, args.max_splits, random.Random(0))
        for scope in scopes:
            mask, strata, weights = scope_strata(ev["slices"], scope)
            counts = {"decisive": 0, "not decisive": 0, "undetermined": 0}
            for a, b in chosen:
                values = {"A": (list(a), [row[s][mask] for s in a]), "B": (list(b), [row[s][mask] for s in b])}
                values = {arm: (s, np.vstack(x)) for arm, (s, x) in values.items()}
                outcome = compare_arms(values, strata, weights, {"A": "A", "B": "B"}, select,
                                       accuracy=args.metric.endswith("accuracy"))
                counts[outcome["verdict"]] += 1
            print(f"  {k} v {k} seeds, {scope or 'all pairs':>16}: {len(chosen)} splits -> "
                  + ", ".join(f"{v} {name}" for name, v in counts.items())
                  + f" (decisive rate {counts['decisive'] / len(chosen):.3f})")


if __name__ == "__main__":
    main()
