"""A private single-node SLURM cluster (with accounting and fake GPUs) for tests; see cluster.py and fixtures.py."""
