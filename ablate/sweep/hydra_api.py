"""The parts of Hydra that ablate uses beyond its public API, in one place.

Hydra 1.3 has no public way to (a) apply value overrides (`lora.r=8`) to an already composed config,
which ablate needs to compose once per set of GROUP overrides instead of once per cell (~0.15 s per
composition: minutes on a large sweep), (b) ask whether an override names a config group, or
(c) subclass its basic sweeper (the grid expansion, `hydra.sweeper.params`, batches). Each is reached
through this module only, and `check()` (run by tests/test_hydra_api.py and before planning) names
what is missing on an incompatible Hydra instead of failing deep inside a sweep.
"""

from __future__ import annotations

import inspect
from importlib import metadata

SUPPORTED = "hydra-core 1.3.x"


class IncompatibleHydra(RuntimeError):
    """The installed Hydra lacks a private API ablate relies on."""


def _config_loader_impl():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return ConfigLoaderImpl


def basic_sweeper_class():
    """Hydra's BasicSweeper, the base of ablate's sweeper (hydra_plugins/ablate_launcher/sweeper.py)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def apply_value_overrides(overrides: list, config) -> None:
    """Apply parsed value overrides (`lora.r=8`, `+x=1`, `~y`) to a composed config in place, exactly as
    Hydra does after composing (its ConfigLoaderImpl._apply_overrides_to_config)."""
    _config_loader_impl()._apply_overrides_to_config(overrides, config)


def group_exists(config_loader, name: str) -> bool:
    """Whether `name` (an override's key or group) is a config group of this config loader's repository."""
    return config_loader.repository.group_exists(name)


def sweeper_config_overrides(sweeper) -> list[str]:
    """`hydra.sweeper.params` of a BasicSweeper, as override strings (its _parse_config)."""
    return sweeper._parse_config()


def check() -> None:
    """Raise IncompatibleHydra naming every private API that is missing or changed shape."""
    problems = []
    try:
        impl = _config_loader_impl()
        params = list(inspect.signature(impl._apply_overrides_to_config).parameters)
        if params[:2] != ["overrides", "cfg"]:
            problems.append(f"ConfigLoaderImpl._apply_overrides_to_config takes ({', '.join(params)})")
        try:
            if "self.repository" not in inspect.getsource(impl.__init__):
                problems.append("ConfigLoaderImpl sets no repository")
        except (OSError, TypeError):  # installed without sources: cannot tell, group_exists will say
            pass
    except (ImportError, AttributeError) as error:
        problems.append(f"ConfigLoaderImpl: {error}")
    try:
        sweeper = basic_sweeper_class()
        for name in ("_parse_config", "split_overrides_to_chunks", "validate_batch_is_legal", "sweep"):
            if not callable(getattr(sweeper, name, None)):
                problems.append(f"BasicSweeper.{name} is missing")
    except ImportError as error:
        problems.append(f"BasicSweeper: {error}")
    try:
        from hydra._internal.config_repository import ConfigRepository

        if not callable(getattr(ConfigRepository, "group_exists", None)):
            problems.append("ConfigRepository.group_exists is missing")
    except ImportError as error:
        problems.append(f"ConfigRepository: {error}")
    if problems:
        raise IncompatibleHydra(f"ablate needs {SUPPORTED}; the installed hydra-core {metadata.version('hydra-core')} "
                                "lacks: " + "; ".join(problems) + " (ablate/sweep/hydra_api.py)")
