"""The collector: a sweep directory in, a decision a reviewer can trust out (docs/ARCHITECTURE.md §6).

    ablate collect <sweep_dir> [select overrides, e.g. slice=verbose_rejected alpha=0.01]
    python -m ablate.collect <sweep_dir>

Python API (used by notebooks/review_sweep.ipynb):

    from ablate.collect import collect, load_sweep, select_config
    summary = collect("outputs/sweeps/...")          # writes report/ and returns summary.json's content
"""

from __future__ import annotations

from ablate.collect.collector import collect, describe, summarise
from ablate.collect.load import Sweep, load_sweep
from ablate.config import select_config  # re-exported: the rule a collection applies

__all__ = ["collect", "describe", "load_sweep", "select_config", "summarise", "Sweep"]
