"""The confirmation stage of a tuned comparison: the selected settings, retrained on fresh seeds.

A tuning sweep picks each objective's setting on validation pairs of its own training runs, then tests
those same runs: the winner's selection luck is still in them (a robust recipe against a sensitive one
is falsely named more often, and the tuned estimate is biased up). So a tuning sweep claims nothing
(its verdicts are exploratory), and `ablate confirm <sweep_dir>` launches the confirmation: one arm per
objective at its selected setting (a single-setting search space, so the same code path and cell
layout), on seeds the tuning sweep never ran, into <sweep_dir>_confirm. That sweep records what it
confirms in its tuning.json (`confirms`), and its collector decides on the TEST pairs only (the
validation pairs chose the settings): that verdict, a look of its own primary test, may be decisive.

The command reuses the tuning sweep's own command line (sweep.json "argv": launcher, data split and
config-dir options included), so on SLURM the confirmation's cells and collector go to the queue like
any sweep's.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from ablate.sweepdir import layout

_DROPPED = ("seed=", "hydra.sweep.dir=", "hydra.sweeper.tune=", "hydra.sweeper.confirms=", "hydra.sweeper.confirm=",
            "hydra.sweeper.race=")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfirmError(ValueError):
    """The sweep cannot be confirmed yet (not tuned, not collected, a selection missing); nothing is run."""


def _value(value: str) -> str:
    """An override value for Hydra's grammar: numbers and booleans as they are, anything else quoted."""
    if _NUMBER.match(value) or value in ("true", "false", "null"):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def confirm_plan(sweep_dir: str | Path, seeds: int | None = None, group: dict[str, str] | None = None,
                 extra: list[str] | None = None, race: bool = False) -> dict:
    """{"argv": the `python -m ablate` arguments, "command": it as one shell line, "dir", "seeds", "settings"}.

    `extra`: overrides for the confirmation only, e.g. fresh held-out pairs (`data.heldout.path=...`); a key that
    changes the selected settings themselves would confirm something else, and is the user's to avoid. `race`: the
    confirmation runs as a race (ablate.sweep.race) on seed ids past the tuning sweep's, `seeds` its max_seeds."""
    sweep_dir = Path(sweep_dir).resolve()
    record = layout.read_sweep(sweep_dir)
    summary_path = sweep_dir / layout.REPORT / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as error:
        raise ConfirmError(f"{summary_path}: no collected report ({error}); run: ablate collect {sweep_dir}") from None
    tuning = summary.get("tuning")
    if not tuning or not tuning.get("groups"):
        raise ConfirmError(f"{sweep_dir} is not a tuned sweep with a selection (summary.json has no tuning groups)")
    groups = tuning["groups"]
    if group:
        groups = [g for g in groups if all(str(g["group"].get(k)) == v for k, v in group.items())]
    if len(groups) != 1:
        names = "; ".join(" ".join(f"{k}={v}" for k, v in g["group"].items()) for g in tuning["groups"])
        raise ConfirmError(f"{sweep_dir}: {len(groups)} groups match; choose one with --group key=value "
                           f"(groups: {names})")
    (chosen,) = groups
    settings = {}
    for objective, entry in chosen["selection"].items():
        if not entry.get("selected"):
            raise ConfirmError(f"{sweep_dir}: no setting selected for {objective} (missing seeds?): nothing to confirm")
        settings[objective] = entry["selected"]
    used = sorted({int(s) for s in _seeds_of(record)})
    n = seeds or max(len(used), 3)
    fresh = list(range((max(used) + 1) if used else 0, (max(used) + 1 if used else 0) + n))
    tune = "{" + ",".join(f"{o}:{{" + ",".join(f"{k}:[{_value(str(v))}]" for k, v in s.items()) + "}"
                          for o, s in settings.items()) + "}"
    argv = [a for a in (record.argv or []) if not a.lstrip("+~").startswith(_DROPPED)]
    if not {"-m", "--multirun"} & set(argv):
        argv.insert(0, "-m")
    confirm_dir = sweep_dir.with_name(sweep_dir.name + "_confirm")
    # `++`: set the spaces whether the tuning sweep's came from a sweep file or the command line (merged key by key:
    # every key of each space is given, so nothing of the searched lists is left)
    if race:  # the race picks its seeds round by round, from the first id the tuning sweep never ran
        budget = f",max_seeds:{seeds}" if seeds else ""
        how = [f"hydra.sweeper.race={{first_seed:{fresh[0]}{budget}}}"]
    else:
        how = [f"seed={','.join(map(str, fresh))}"]
    argv += [f"++hydra.sweeper.tune={tune}", f"hydra.sweeper.confirms={sweep_dir}", *how,
             *(f"{k}={v}" for k, v in chosen["group"].items()), *(extra or []), f"hydra.sweep.dir={confirm_dir}"]
    return {"argv": argv, "command": "python -m ablate " + " ".join(shlex.quote(a) for a in argv),
            "dir": confirm_dir, "seeds": fresh, "settings": settings, "group": chosen["group"], "race": race}


def _seeds_of(record: layout.SweepRecord) -> list[int]:
    seeds = []
    for cell in record.cells or []:
        value = layout.override_values(cell.get("overrides", [])).get("seed")
        if value is not None and str(value).lstrip("-").isdigit():
            seeds.append(int(value))
    return seeds


def run_confirmation(sweep_dir: str | Path, seeds=True) -> int:
    """Plan and run the confirmation (`python -m ablate <its arguments>`): the local sweep's next step, or, on SLURM,
    what the tuning sweep's collector job does after its report (it submits the confirmation's cells). `seeds`:
    hydra.sweeper.confirm's value (true, a number of fresh seeds, or "race"). The exit status of the command."""
    import subprocess
    import sys

    race = seeds == "race"
    plan = confirm_plan(sweep_dir, None if seeds is True or race else int(seeds), race=race)
    fresh = f"a race from seed {plan['seeds'][0]}" if race else f"fresh seeds {','.join(map(str, plan['seeds']))}"
    print(f"confirming the selected settings on {fresh} in {plan['dir']}:\n  {plan['command']}", flush=True)
    return subprocess.run([sys.executable, "-m", "ablate", *plan["argv"]], check=False).returncode


def requested(sweep_dir: str | Path):
    """The seeds a tuned sweep asked to be confirmed on (`hydra.sweeper.confirm`, kept in tuning.json), or None."""
    try:
        record = json.loads((Path(sweep_dir) / layout.TUNING_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("confirms"):
        return None
    return record.get("confirm") or None
