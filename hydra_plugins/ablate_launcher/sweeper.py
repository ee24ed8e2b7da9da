"""Hydra's basic sweeper without its up-front validation pass, plus per-objective search spaces.

BasicSweeper composes every cell once to validate the batch, then ablate's launchers compose and
validate every cell again (with range checks and cell ids): at ~0.15 s a composition, a 1,000-cell
sweep paid minutes twice. The launchers' validation is a superset, so this sweeper skips the first.

`hydra.sweeper.tune` ({objective: {key: [values]}}, README "Tuned comparisons") replaces the plain
grid by each objective's own search space times the other swept keys (ablate.sweep.search_space); the
spaces, each tuned key's default and the budget go to <sweep_dir>/tuning.json for the collector.
"""

# No `from __future__ import annotations`: see local.py.

import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from ablate.sweep import hydra_api


@dataclass
class AblateSweeperConf:
    _target_: str = "hydra_plugins.ablate_launcher.sweeper.AblateSweeper"
    max_batch_size: Any = None
    params: Any = field(default_factory=dict)
    tune: Any = field(default_factory=dict)  # {objective: {key: [values]}}: a tuned comparison (empty: off)
    confirms: Any = None  # the tuning sweep whose selected settings this sweep confirms on fresh seeds (ablate confirm)
    race: Any = None  # true or {max_seeds, max_cells, max_gpu_hours, spending, ...}: rounds (ablate.sweep.race)
    confirm: Any = None  # a tuned sweep: true, a number of seeds or race runs `ablate confirm` as the next step


ConfigStore.instance().store(group="hydra/sweeper", name="ablate", node=AblateSweeperConf, provider="ablate")


log = logging.getLogger(__name__)


class AblateSweeper(hydra_api.basic_sweeper_class()):
    def __init__(self, max_batch_size=None, params=None, tune=None, confirms=None, race=None, confirm=None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.tune = tune
        self.confirms = confirms
        self.race = race
        self.confirm = confirm

    def sweep(self, arguments):
        if self.race:
            return self._race(arguments)
        if not self.tune:
            return super().sweep(arguments)
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        from ablate.sweep.search_space import TuningError, check_spaces, expand
        from ablate.sweepdir.atomic import atomic_write_json
        from ablate.sweepdir.layout import TUNING_JSON

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*hydra_api.sweeper_config_overrides(self), *arguments])
        swept = OrderedDict(zip(_keys(overrides), _lists(overrides), strict=True))  # a repeated key: the last wins
        try:
            confirm = self.confirm
            if confirm and not (confirm is True or confirm == "race" or (isinstance(confirm, int) and confirm > 0)):
                raise TuningError(f"hydra.sweeper.confirm = {confirm!r}: true, a number of fresh seeds, or race")
            spaces = check_spaces(OmegaConf.to_container(self.tune, resolve=True))
            jobs, budget = expand(spaces, swept)
        except TuningError as error:  # before anything is composed, written or run
            print(f"TuningError: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        atomic_write_json(sweep_dir / TUNING_JSON, {"spaces": spaces, "defaults": self._defaults(spaces, swept),
                                                    "budget": budget,
                                                    **({"confirms": str(self.confirms)} if self.confirms else {}),
                                                    **({"confirm": self.confirm} if self.confirm and not self.confirms
                                                       else {})})
        log.info("tuned comparison: %s", ", ".join(f"{o} {b['settings']} settings" for o, b in budget.items()))
        batches = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        returns, initial_job_idx = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                _ = r.return_value  # as BasicSweeper: a failed job raises here
            initial_job_idx += len(batch)
            returns.append(results)
        if self.confirm and not self.confirms:
            self._confirm(sweep_dir)
        return returns

    def _confirm(self, sweep_dir: Path) -> None:
        """The confirmation stage as the next local step: the selected settings on fresh seeds (ablate confirm)."""
        from ablate.sweep.confirm import ConfirmError, run_confirmation

        if "slurm" in str(self.config.hydra.launcher.get("_target_", "")).lower():
            print(f"hydra.sweeper.confirm: the collector job submits the confirmation once it has written the report "
                  f"(into {sweep_dir}_confirm)", flush=True)
            return
        try:
            code = run_confirmation(sweep_dir, self.confirm)
        except ConfirmError as error:
            print(f"ablate confirm: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if code:
            raise SystemExit(code)

    def _race(self, arguments):
        """The grid in rounds of seeds, arms dropped as they are beaten (ablate.sweep.race)."""
        from types import SimpleNamespace

        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        from ablate.config import select_config
        from ablate.sweep.race import RaceError, plan_arms, run_race, settings_of

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*hydra_api.sweeper_config_overrides(self), *arguments])
        swept = OrderedDict(zip(_keys(overrides), _lists(overrides), strict=True))
        if not any(a.lstrip("+~").startswith("seed=") for a in arguments):
            swept.pop("seed", None)  # the config's default seeds (hydra.sweeper.params): the race picks its own
        select = SimpleNamespace(**OmegaConf.to_container(select_config(base=self.config.select), resolve=True))
        try:
            settings = settings_of(OmegaConf.to_container(self.race, resolve=True)
                                   if OmegaConf.is_config(self.race) else self.race)
            if settings is None:
                return super().sweep(arguments)
            groups = None
            if self.tune and not self.confirms:  # a tuning race: settings race within each objective's space
                arms, groups = self._tuning_race_arms(swept)
                plan_arms(swept, settings, select.min_seeds, arms)
            else:
                arms = plan_arms(swept, settings, select.min_seeds, self._confirmed_arms(swept))
            sweep_dir = Path(self.config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if self.tune:  # a confirmation race decides on the test pairs, a tuning race selects on validation pairs
                from ablate.sweep.search_space import check_spaces
                from ablate.sweepdir.atomic import atomic_write_json
                from ablate.sweepdir.layout import TUNING_JSON

                spaces = check_spaces(OmegaConf.to_container(self.tune, resolve=True))  # as tuning.json holds them
                stage = ({"confirms": str(self.confirms)} if self.confirms else
                         {"race": True, **({"confirm": self.confirm} if self.confirm else {})})
                atomic_write_json(sweep_dir / TUNING_JSON, {"spaces": spaces, "defaults": self._defaults(spaces, swept),
                                                            "budget": {}, **stage})
            if "slurm" in str(self.config.hydra.launcher.get("_target_", "")).lower():
                return self._race_on_slurm(sweep_dir, arms, settings, select, groups)
            counter = {"idx": 0}

            def launch(jobs):
                self.launcher.launch(jobs, initial_job_idx=counter["idx"])
                counter["idx"] += len(jobs)

            from hydra_plugins.ablate_launcher.local import collect_and_describe

            def report():  # after the round's look, so the report shows the race's decision on the cells it has
                collect_and_describe(sweep_dir, self.config.select)

            if hasattr(self.launcher, "collect_at_end"):
                self.launcher.collect_at_end = False
            record = run_race(sweep_dir, arms, settings, select, launch, log=lambda line: print(line, flush=True),
                              groups=groups, report=report)
            report()
            if record.get("incomplete"):  # a cell of the round failed: no look; the same command carries on
                raise SystemExit(1)
            if groups and self.confirm:  # a tuning race with hydra.sweeper.confirm: the selection's confirmation next
                self._confirm(sweep_dir)
        except RaceError as error:  # before anything is run (or between rounds, with the cells kept)
            print(f"RaceError: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return []

    def _tuning_race_arms(self, swept) -> tuple[list[list[str]], dict[str, str]]:
        """A tuning race's arms (every setting of each objective's space) and the space of each; it selects on
        validation pairs, so a sweep without them is refused before anything runs."""
        from omegaconf import OmegaConf

        from ablate.sweep.race import RaceError, tuning_race_arms
        from ablate.sweep.search_space import TuningError, check_spaces

        confirm = self.confirm
        if confirm and not (confirm is True or confirm == "race" or (isinstance(confirm, int) and confirm > 0)):
            raise RaceError(f"hydra.sweeper.confirm = {confirm!r}: true, a number of fresh seeds, or race")
        if not any(k.lstrip("+~") == "data.validation_pairs" for k in swept) and \
                OmegaConf.select(self.config, "data.validation_pairs") is None:
            raise RaceError("a tuning race selects each objective's setting on validation pairs: set "
                            "data.validation_pairs (e.g. data.validation_pairs=100)")
        try:
            return tuning_race_arms(check_spaces(OmegaConf.to_container(self.tune, resolve=True)), swept)
        except TuningError as error:
            raise RaceError(f"hydra.sweeper.tune: {error}") from None

    def _confirmed_arms(self, swept) -> list[list[str]] | None:
        """A confirmation race's arms: each objective at its selected setting (one-setting spaces from `ablate confirm
        --race`); None for an ordinary race."""
        if not self.tune:
            return None
        from omegaconf import OmegaConf

        from ablate.sweep.race import RaceError
        from ablate.sweep.search_space import TuningError, check_spaces, expand, settings

        try:
            spaces = check_spaces(OmegaConf.to_container(self.tune, resolve=True))
            if any(len(settings(space)) != 1 for space in spaces.values()):
                raise TuningError("a confirmation race takes one selected setting per objective")
            jobs, _ = expand(spaces, {k: v for k, v in swept.items() if k.lstrip("+~") != "seed"})
        except TuningError as error:
            raise RaceError(f"hydra.sweeper.tune: {error}") from None
        return jobs

    def _race_on_slurm(self, sweep_dir: Path, arms, settings, select, groups=None):
        """The race's next round through the SLURM launcher with a race job after it; each race job takes its round's
        look and submits the next round. Run again on a race under way whose jobs have all ended, it carries the race
        on from its record: a round whose cells did not all finish (a failed run; a local race's process that was
        stopped) is submitted again, its finished cells skipped; a finished round whose look was never taken is
        looked at here."""
        from ablate.sweep.race import (
            RaceJob,
            ended,
            next_round,
            open_race,
            race_round_job,
            refuse_a_round_in_flight,
            round_finished,
            stop_words,
        )
        from ablate.sweepdir.atomic import atomic_write_json
        from ablate.sweepdir.layout import RACE_JSON

        record = open_race(sweep_dir, arms, settings, select, groups)
        if ended(record):
            print(f"race already ended at round {len(record['rounds'])}", flush=True)
            return []
        refuse_a_round_in_flight(sweep_dir, record)
        plan = record.get("pending")
        if plan is not None and round_finished(sweep_dir, plan):
            # its look was never taken (the race job, or the local process, ended first): here, then the next round
            race_round_job(sweep_dir, log=lambda line: print(line, flush=True), launcher=self.config.hydra.launcher)
            return []
        again = plan is not None
        if plan is None:
            plan = next_round(sweep_dir, record)
            if plan is None:  # the budget cannot pay for another round
                print(f"race ended at round {len(record['rounds'])}: {stop_words(record)}", flush=True)
                return []
        record["pending"] = {key: value for key, value in plan.items() if key != "process"}  # SLURM's now
        atomic_write_json(sweep_dir / RACE_JSON, record)
        print(f"race round {plan['round']}{' again (its cells that did not finish)' if again else ''}: "
              f"{len(plan['live'])} arms x seeds {plan['seeds']}; after it a race job takes the look and submits the "
              f"next round (race.json, ablate status {sweep_dir})", flush=True)
        self.launcher.collector_job = RaceJob(str(sweep_dir))
        self.launcher.launch(plan["jobs"], initial_job_idx=0)
        return []

    def _defaults(self, spaces: dict, swept: dict) -> dict:
        """Each tuned key's value without the search space: the objective's own config (paper defaults,
        conf/objective_tuning/) under the sweep's other overrides (the first value of a swept one).
        The collector decides at these "shared defaults" too when every space contains them."""
        from omegaconf import OmegaConf

        from ablate.sweep.search_space import override_value

        base = [values[0] for values in swept.values()]
        defaults = {}
        for objective, space in spaces.items():
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [*base, f"objective={objective}"])
                defaults[objective] = {key: override_value(OmegaConf.select(cfg, key, default=None)) for key in space}
            except Exception as error:  # noqa: BLE001 - the launcher reports a bad config, for every cell
                log.warning("defaults of %s not composed (%s): no decision at defaults", objective, error)
                defaults[objective] = {key: None for key in space}
        return defaults

    def validate_batch_is_legal(self, batch) -> None:
        """ablate's launchers validate every cell before anything runs (ablate.sweep.plan.plan_cells)."""


def _keys(overrides) -> list[str]:
    return [o.get_key_element() for o in overrides]


def _lists(overrides) -> list[list[str]]:
    """Each override as BasicSweeper expands it: its `key=value` strings (one for a fixed override)."""
    lists = []
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            lists.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            lists.append([f"{key}={o.get_value_element_as_str()}"])
    return lists
