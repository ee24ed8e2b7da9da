"""ablate's Hydra plugins: the local and SLURM launchers, a sweeper, the sweeps/ search path."""

# No `from __future__ import annotations` in this package: see local.py.


class LauncherSetup:
    """The state every ablate launcher keeps from Hydra's `setup` call (a mixin, not a Hydra plugin)."""

    def __init__(self) -> None:
        self.config = None
        self.hydra_context = None
        self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
