"""The `ablate` console script: follow, repair and review sweeps.

    ablate status   <sweep_dir> [--watch [S]] [--json]  per cell: state, SLURM state + reason, step, s/step, ETA
    ablate resubmit <sweep_dir> [--failed] [--cells ID ...] [--force]   submit again what did not finish (SLURM)
    ablate cancel   <sweep_dir>                         scancel every queued or running job of the sweep
    ablate collect  <sweep_dir> [key=value ...]         decision, statistics and report (conf/select overrides)
    ablate confirm  <sweep_dir> [key=value ...] [--seeds N] [--race] [--print]   a tuned sweep's settings, fresh seeds
    ablate race     [key=value ...] [--max-seeds N] [--round-seeds N] [--max-cells N] [--max-gpu-hours H]
                    [--spending RHO|pocock] [--futility-power P] [--print]   the grid in rounds of seeds
    ablate wandb-report <sweep_dir> [--sync] [--new]    publish the W&B Report (after `wandb sync`, or --sync)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _status(args) -> int:
    import json
    import time

    from ablate.sweep.race import in_flight, read_record, status_lines
    from ablate.sweep.status import format_status, reconcile

    while True:
        table = reconcile(args.sweep_dir)
        if args.json:
            rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
            race = read_record(args.sweep_dir) if status_lines(args.sweep_dir) else None
            print(json.dumps({"sweep_dir": str(args.sweep_dir), "cells": rows} | ({"race": race} if race else {}),
                             indent=2))
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")  # redraw in place
            print("\n".join([format_status(table, args.sweep_dir), *status_lines(args.sweep_dir)]), flush=True)
        if not args.watch or (table.state.isin(["done", "failed"]).all() and not in_flight(args.sweep_dir)):
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _resubmit(args) -> int:
    from ablate.sweepdir.layout import read_sweep
    from ablate.sweepdir.liveness import sweep_lock

    read_sweep(args.sweep_dir)  # FileNotFoundError naming the directory when it is not a sweep
    with sweep_lock(args.sweep_dir):  # a launcher submitting into this sweep right now finishes first
        return _resubmit_locked(args)


def _resubmit_locked(args) -> int:
    from omegaconf import OmegaConf

    from ablate.config import select_config
    from ablate.sweep.partition import ImpossibleRequest
    from ablate.sweep.race import RaceJob
    from ablate.sweep.slurm import submit_cells
    from ablate.sweep.status import ALIVE, reconcile
    from ablate.sweepdir import layout

    sweep_dir = Path(args.sweep_dir)
    sweep = layout.read_sweep(sweep_dir)
    if sweep.slurm is None:
        print(f"{sweep_dir} was not launched on SLURM: re-run its command with hydra.sweep.dir={sweep_dir}",
              file=sys.stderr)
        return 2
    table = reconcile(sweep_dir)
    race = _unfinished_race(sweep_dir)
    if args.cells:
        unknown = set(args.cells) - set(table.cell_id)
        if unknown:
            print(f"unknown cell ids: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
    if race is not None:  # only the round in flight: a look already taken must not see its cells change
        round_cells = _round_cells(sweep, race.get("pending"))
        outside = sorted(set(args.cells or []) - round_cells)
        if outside:
            print(f"not in the race's round in flight (its looks so far were taken on these cells as they are): "
                  f"{', '.join(outside)}", file=sys.stderr)
            return 2
        table = table[table.cell_id.isin(round_cells)]
    if args.cells:
        chosen = table[table.cell_id.isin(args.cells)]
    elif args.failed:
        chosen = table[table.state == "failed"]
    else:
        chosen = table[table.state != "done"]
    alive = chosen.slurm_state.isin(ALIVE)
    if alive.any():
        print(f"skipping {int(alive.sum())} cell(s) whose job is still queued or running")
    chosen = chosen[~alive & (chosen.state != "done")]
    if chosen.empty:
        print("nothing to resubmit" + (f"; the race goes on with its own command: {_race_command(sweep_dir)}"
                                       if race is not None else ""))
        return 0
    overrides = sweep.overrides_of()
    cells = [(OmegaConf.load(layout.cell_dir(sweep_dir, cid) / layout.CONFIG_YAML), overrides[cid], cid)
             for cid in chosen.cell_id]
    launcher = OmegaConf.create(sweep.slurm)
    launcher.force = args.force
    try:
        # a race's round is followed by its race job (the look, then the next round), not by a plain collector
        submitted = submit_cells(sweep_dir, cells, launcher,
                                 select_config(base=OmegaConf.create(sweep.select or {})),
                                 collector=RaceJob(str(sweep_dir)) if race is not None else None)
    except ImpossibleRequest as error:
        print(f"ablate resubmit: {error}", file=sys.stderr)
        return 2
    arrays = ", ".join(a["job_id"] for a in submitted["arrays"])
    after = "race job" if race is not None else "collector job"
    print(f"resubmitted {len(cells)} cell(s) as job array(s) {arrays}; {after} {submitted['collector_job']}")
    return 0


def _unfinished_race(sweep_dir: Path) -> dict | None:
    """The race record of a race that has not ended (None: not a race, or one that has ended)."""
    from ablate.sweep.race import ended, read_record

    race = read_record(sweep_dir)
    return race if race is not None and not ended(race) else None


def _round_cells(sweep, pending: dict | None) -> set[str]:
    """Cell ids of the cells a race's round in flight adds (none between rounds; its other cells ran in rounds whose
    looks were taken)."""
    ids = {" ".join(overrides): cid for cid, overrides in sweep.overrides_of().items()}
    return {ids[name] for name in (pending or {}).get("new", []) if name in ids}


def _race_command(sweep_dir: Path, here: bool = False) -> str:
    """The race's own command (same hydra.sweep.dir): it goes on from race.json; `here`: less its launcher overrides,
    so that it trains the round in this terminal."""
    from ablate.collect.decide import rerun_command
    from ablate.collect.load import load_sweep

    sweep = load_sweep(sweep_dir)
    argv = sweep.record.get("argv")
    if here and isinstance(argv, list):
        launcher = ("hydra/launcher=", "hydra.launcher.")
        sweep.record = sweep.record | {"argv": [a for a in argv if not str(a).lstrip("+~").startswith(launcher)]}
    return rerun_command(sweep)


def _cancel(args) -> int:
    from ablate.sweep.status import ALIVE, reconcile, slurm_states
    from ablate.sweepdir.layout import read_sweep

    sweep = read_sweep(args.sweep_dir)
    table = reconcile(args.sweep_dir)
    jobs = [j for j, s in zip(table.job_id, table.slurm_state, strict=True) if j and s in ALIVE]
    collectors = list(dict.fromkeys([*(sweep.collector_jobs or []), sweep.collector_job]))
    jobs += [job for job, state in slurm_states([c for c in collectors if c]).items() if state in ALIVE]
    if not jobs:
        print("no queued or running job in this sweep")
        return 0
    subprocess.run(["scancel", *jobs], check=True)
    print(f"cancelled {len(jobs)} job(s); finished cells are kept. Resume with: ablate resubmit {args.sweep_dir}")
    if _unfinished_race(Path(args.sweep_dir)) is not None:
        print(f"(a race: resubmitted, its round is followed by its race job; or go on in this terminal with: "
              f"{_race_command(Path(args.sweep_dir), here=True)})")
    return 0


def _collect(args) -> int:
    from omegaconf import OmegaConf

    from ablate.collect import collect, describe
    from ablate.config import select_config
    from ablate.sweepdir.ledger import read_ledger

    # the rule starts from the sweep's primary test (its first collection's), so a plain `ablate collect` is a
    # look of that test; an override that changes it makes this collection exploratory
    entries, _ = read_ledger(args.sweep_dir)
    primary = entries[0].get("select") if entries else None
    base = OmegaConf.create(primary) if isinstance(primary, dict) else None
    print(describe(collect(args.sweep_dir, select_config(args.overrides, base=base), plots=not args.no_plots)))
    return 0


def _confirm(args) -> int:
    from ablate.sweep.confirm import ConfirmError, confirm_plan

    try:
        plan = confirm_plan(args.sweep_dir, args.seeds, dict(g.split("=", 1) for g in args.group or []),
                            args.overrides, race=args.race)
    except ConfirmError as error:
        print(f"ablate confirm: {error}", file=sys.stderr)
        return 2
    picks = "; ".join(f"{o}: {' '.join(f'{k}={v}' for k, v in s.items())}" for o, s in plan["settings"].items())
    seeds = ",".join(map(str, plan["seeds"]))
    fresh = f"a race from seed {plan['seeds'][0]}" if plan["race"] else f"fresh seeds {seeds}"
    print(f"confirming {picks} on {fresh} in {plan['dir']}:\n  {plan['command']}")
    if args.print:
        return 0
    return subprocess.run([sys.executable, "-m", "ablate", *plan["argv"]], check=False).returncode


RACE_FLAGS = ("max_seeds", "round_seeds", "max_cells", "max_gpu_hours", "spending", "futility_power")


def race_argv(overrides: list[str], flags: dict) -> list[str]:
    """`python -m ablate` arguments of the race `ablate race` names: the grid as given, hydra.sweeper.race from the
    flags (true when none is set). RaceError for settings a race refuses, before anything runs."""
    from ablate.sweep.race import SEEDS_GIVEN, RaceError, settings_of

    if any(o.lstrip("+~").startswith("hydra.sweeper.race") for o in overrides):
        raise RaceError("give the race's settings as flags (--max-seeds, ...) or run `python -m ablate -m ... "
                        "hydra.sweeper.race=...` yourself, not both")
    if any(o.lstrip("+~").startswith("seed=") for o in overrides):
        raise RaceError(SEEDS_GIVEN)
    chosen = {key: value for key, value in flags.items() if value is not None}
    settings_of(chosen or True)  # the sweeper's checks of the settings themselves, here before Hydra starts
    race = "{" + ",".join(f"{key}:{value}" for key, value in chosen.items()) + "}" if chosen else "true"
    return ["-m", *overrides, f"hydra.sweeper.race={race}"]


def _spending(value: str) -> str | float:
    if value == "pocock":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: pocock, or a positive rho (alpha * t^rho)") from None


def _race(args) -> int:
    import shlex

    from ablate.sweep.race import RaceError

    try:
        argv = race_argv(args.overrides, {key: getattr(args, key) for key in RACE_FLAGS})
    except RaceError as error:
        print(f"ablate race: {error}", file=sys.stderr)
        return 2
    print("python -m ablate " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if args.print:
        return 0
    try:
        return subprocess.run([sys.executable, "-m", "ablate", *argv], check=False).returncode
    except KeyboardInterrupt:  # the sweep saw it too and said where it stopped; no second traceback
        return 130


def _wandb_report(args) -> int:
    from ablate.review.collector_run import DEFINITION, sync_offline_runs
    from ablate.review.wandb_report import publish_report, read_definition, write_definition
    from ablate.sweepdir import layout

    path = Path(args.sweep_dir) / layout.REPORT / DEFINITION
    if not path.exists():
        print(f"ablate wandb-report: no {path}: it is written when a sweep whose cells used logger=wandb is "
              f"collected (ablate collect {args.sweep_dir})", file=sys.stderr)
        return 2
    try:
        definition = read_definition(path)
    except ValueError as error:
        print(f"ablate wandb-report: {error}", file=sys.stderr)
        return 2
    if args.sync and sync_offline_runs(Path(args.sweep_dir), definition) != 0:
        print("ablate wandb-report: wandb sync failed; the report was not published", file=sys.stderr)
        return 1
    try:
        definition = write_definition(path, publish_report(definition, new=args.new))
    except Exception as error:  # network, login, permissions: the definition stays for another try
        from ablate.review.tracking import describe_error

        print(f"ablate wandb-report: could not save the report ({describe_error(error)})", file=sys.stderr)
        return 1
    print(f"W&B Report: {definition['url']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="where every cell stands (status.json reconciled with squeue/sacct)")
    p.add_argument("sweep_dir")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until every cell has ended; Ctrl-C stops")
    p.add_argument("--json", action="store_true", help="one JSON document: every cell's row")
    p.set_defaults(func=_status)

    p = sub.add_parser("resubmit", help="submit the cells that did not finish again, plus a new collector job")
    p.add_argument("sweep_dir")
    p.add_argument("--failed", action="store_true", help="only cells in state failed")
    p.add_argument("--cells", nargs="+", metavar="CELL_ID", help="exactly these cells")
    p.add_argument("--force", action="store_true", help="submit even requests the partition can never run")
    p.set_defaults(func=_resubmit)

    p = sub.add_parser("cancel", help="scancel every queued or running job of the sweep")
    p.add_argument("sweep_dir")
    p.set_defaults(func=_cancel)

    p = sub.add_parser("collect", help="compare the cells of a sweep and write its report")
    p.add_argument("sweep_dir")
    p.add_argument("overrides", nargs="*", help="decision-rule overrides (conf/select/default.yaml), e.g. slice=clean")
    p.add_argument("--no-plots", action="store_true", help="summary.json and cells.csv only")
    p.set_defaults(func=_collect)

    p = sub.add_parser("confirm", help="retrain a tuned sweep's selected settings on fresh seeds (the decisive stage)")
    p.add_argument("sweep_dir")
    p.add_argument("--seeds", type=int, help="fresh seeds per objective (default: as many as the tuning sweep ran); "
                                             "with --race, the race's max_seeds")
    p.add_argument("--race", action="store_true", help="confirm as a race: rounds of fresh seeds, arms dropped as "
                                                       "they are beaten (hydra.sweeper.race)")
    p.add_argument("--group", nargs="+", metavar="KEY=VALUE", help="which group's selection, when there are several")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.add_argument("overrides", nargs="*", help="for the confirmation only, e.g. fresh held-out pairs: "
                                                "data.heldout.path=fresh.jsonl")
    p.set_defaults(func=_confirm)

    p = sub.add_parser("race", help="run a grid in rounds of seeds, arms dropped as they are beaten (the same as "
                                    "python -m ablate -m <grid> hydra.sweeper.race=...)")
    p.add_argument("overrides", nargs="*", help="the grid and any other override, e.g. objective=dpo,simpo lora.r=8,16 "
                                                "hydra/launcher=slurm (no seed=: the race picks its seeds)")
    p.add_argument("--max-seeds", type=int, help="seeds per arm at most, the horizon alpha is spent over (default 12)")
    p.add_argument("--round-seeds", type=int, help="seeds added per live arm each round (default 1)")
    p.add_argument("--max-cells", type=int, help="cells in all, every round and arm (default: no limit)")
    p.add_argument("--max-gpu-hours", type=float, help="device-hours in all (default: no limit)")
    p.add_argument("--spending", type=_spending, help="alpha spending: rho of alpha * t^rho (default 3) or pocock")
    p.add_argument("--futility-power", type=float, help="stop when a live rival could be resolved within max_seeds "
                                                        "less often than this (default 0.3); 0: no futility stops")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_race)

    p = sub.add_parser("wandb-report", help="publish the sweep's W&B Report from report/wandb_report.json")
    p.add_argument("sweep_dir")
    p.add_argument("--sync", action="store_true", help="first `wandb sync` the sweep's offline runs")
    p.add_argument("--new", action="store_true", help="save a new report instead of updating the one saved before")
    p.set_defaults(func=_wandb_report)

    # overrides may come after flags too (`ablate race objective=dpo,simpo --max-seeds 10 lora.r=8,16`): argparse
    # ends a positional list at the first flag, so the rest of the list arrives here
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") for a in extra)):
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")  # its own usage, not ablate's
    if extra:
        args.overrides += extra
    try:
        return args.func(args)
    except FileNotFoundError as error:
        print(f"ablate {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
