"""Hydra's private API, reached only through ablate/sweep/hydra_api.py, is checked before every plan."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ablate.sweep import hydra_api


def test_the_installed_hydra_has_what_ablate_uses():
    hydra_api.check()


def test_value_overrides_apply_as_hydra_applies_them():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = OmegaConf.create({"lora": {"r": 8}, "seed": 0})
    overrides = OverridesParser.create().parse_overrides(["lora.r=16", "+extra=1", "~seed"])
    hydra_api.apply_value_overrides(overrides, config)
    assert OmegaConf.to_container(config) == {"lora": {"r": 16}, "extra": 1}


def test_an_incompatible_hydra_is_named_before_anything_runs(monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    monkeypatch.delattr(ConfigLoaderImpl, "_apply_overrides_to_config")
    monkeypatch.delattr(BasicSweeper, "_parse_config")
    with pytest.raises(hydra_api.IncompatibleHydra, match=r"hydra-core 1\.3\.x.*_apply_overrides_to_config.*"
                                                          r"BasicSweeper\._parse_config is missing"):
        hydra_api.check()


def test_planning_stops_on_an_incompatible_hydra(monkeypatch, repo_root, tmp_path):
    """plan_cells runs the check first: a broken Hydra fails with the list, not deep inside a sweep."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from ablate.sweep.plan import plan_cells

    monkeypatch.delattr(ConfigLoaderImpl, "_apply_overrides_to_config")
    with pytest.raises(hydra_api.IncompatibleHydra, match="_apply_overrides_to_config"):
        plan_cells(None, OmegaConf.create({}), [["seed=0"]])
