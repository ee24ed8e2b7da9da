"""A sweep: planning (`plan`), one cell's run (`run`), SLURM submission (`slurm`, `jobs`, `partition`), the
cells' state (`status`), tuned search spaces (`search_space`) and Hydra's private API (`hydra_api`)."""
