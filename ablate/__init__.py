"""ablate: decisive ablations of LLM preference-optimisation objectives trained with LoRA.

Entry points: `python -m ablate [-m] key=value ...` (Hydra: one cell or a sweep), the `ablate`
console script (status, resubmit, cancel, collect), and this small Python API:

    from ablate import run_cell, OBJECTIVES            # train one composed cell; the objective registry
    from ablate.collect import collect, load_sweep     # decide and report on a sweep directory

Names are resolved lazily, so `ablate collect` does not pay for importing torch.
"""

from importlib import metadata

from ablate.paths import DISTRIBUTION

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0.0.0"

__all__ = ["OBJECTIVES", "get_objective", "run_cell", "__version__"]


def __getattr__(name: str):
    if name in ("OBJECTIVES", "get_objective"):
        from ablate.train import objectives

        return getattr(objectives, name)
    if name == "run_cell":
        from ablate.sweep.run import run_cell

        return run_cell
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")
