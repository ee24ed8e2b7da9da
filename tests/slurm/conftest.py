"""Makes the SLURM cluster fixtures available to tests/slurm (they share one cluster with any other import)."""

from .fixtures import slurm_activated, slurm_cluster  # noqa: F401
