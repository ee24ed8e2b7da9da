"""The sweep's review in W&B, after each collection: a collector run and the W&B Report (docs/ARCHITECTURE.md §9).

`review_in_wandb` is called once at the end of `ablate.collect.collect`, and does something only
when the sweep's cells used logger=wandb. It logs one collector run (job_type `collect`, the cells'
group): the cells, arms, decisions, comparisons, diagnostics and problems as W&B Tables, the
decision in the run's summary, the report's plots as images. There is one collector run per decision
rule (its id hashes the rule), so re-collecting with the same rule updates it and another rule gets
its own run, named after what it changed (`collect slice=clean alpha=0.01`). Then it writes
report/wandb_report.json and, online, saves the W&B Report and prints its URL.

Tables are built generically from the summary's lists of dicts (nested dicts become dotted columns),
so a field the collector adds reaches W&B without a change here. Nothing here ever raises.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ablate.review.tracking import describe_error, run_files_dir, start_run, sweep_group, wandb_run_id
from ablate.review.wandb_report import publish_report, report_definition, write_definition
from ablate.sweepdir import layout
from ablate.sweepdir.ids import config_hash
from ablate.verdicts import verdict_of

log = logging.getLogger(__name__)

DEFINITION = "wandb_report.json"


def review_in_wandb(sweep_dir: str | Path, summary: dict) -> dict | None:
    """Collector run + report definition (+ the report itself, online); the definition, or None."""
    try:
        sweep_dir = Path(sweep_dir)
        logger = sweep_logger(sweep_dir)
        if logger is None:
            return None
        return _review(sweep_dir, summary, logger)
    except Exception as error:  # the collection's files are written already; W&B only adds to them
        log.warning(f"W&B review failed ({describe_error(error)}); report/ is complete")
        return None


def _review(sweep_dir: Path, summary: dict, logger: dict) -> dict:
    report_dir = sweep_dir / layout.REPORT
    group = logger.get("group") or sweep_group(sweep_dir)
    select = summary.get("select", {})
    tables = collector_tables(summary, report_dir / "cells.csv")
    plots = sorted(report_dir.glob("plots/*.png"))
    collector_run = {"id": collector_run_id(sweep_dir, select), "name": collector_run_name(select)}
    path = report_dir / DEFINITION
    definition = write_definition(path, report_definition(
        summary, project=logger.get("project"), entity=logger.get("entity"), group=group,
        collector_run=collector_run, tables=list(tables), plots=[f"plots/{p.stem}" for p in plots]))
    run = start_run(
        "collector", mode=logger.get("mode"), init_timeout=logger.get("init_timeout", 60.0),
        finish_timeout=logger.get("finish_timeout", 300.0),
        project=logger.get("project"), entity=logger.get("entity"), group=group, job_type="collect",
        # beside report/, not in it: report/ is replaced whole at every collection
        name=collector_run["name"], id=collector_run["id"], resume="allow", dir=run_files_dir(sweep_dir),
        tags=[*logger.get("tags", []), "collect"],
        config={"select": select, "axes": summary.get("axes"), "sweep_dir": str(sweep_dir)},
    )
    online = run is not None and _log_collection(run, summary, tables, plots)
    if logger.get("mode") == "disabled":
        return definition
    if not online:
        print(f"W&B Report definition: {path} (offline; publish with: ablate wandb-report {sweep_dir} --sync)",
              flush=True)
        return definition
    try:
        definition = write_definition(path, publish_report(definition))
        print(f"W&B Report: {definition['url']}", flush=True)
    except Exception as error:
        log.warning(f"W&B Report not saved ({describe_error(error)}); retry with: ablate wandb-report {sweep_dir}")
    return definition


def _log_collection(run, summary: dict, tables: dict, plots: list[Path]) -> bool:
    """Log one collection to the collector run and finish it; whether the run is online."""
    import wandb

    try:
        payload = {name: wandb.Table(columns=columns, data=rows, allow_mixed_types=True)
                   for name, (columns, rows) in tables.items()}
        payload |= {f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}
        run.log(payload)
        run.summary.update(collector_summary(summary))
    except Exception as error:
        log.warning(f"W&B collector run incomplete ({describe_error(error)}); report/ has everything")
    try:
        online = not (run.offline or run.disabled)
        run.finish()
    except Exception as error:
        log.warning(f"W&B collector run not finished ({describe_error(error)})")
        return False
    return online


def sweep_logger(sweep_dir: Path) -> dict | None:
    """The logger section of the most recently written cell config with logger=wandb; None if no cell used W&B.

    The logger is not part of a cell's id, so a sweep re-run with logger=wandb reconfigures only the
    cells it runs again: the newest config says how the sweep is tracked now.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    configs = sorted(Path(sweep_dir).glob("cells/*/config.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in configs:
        text = path.read_text()
        if "wandb" not in text:  # most sweeps do not use W&B: skip parsing their configs
            continue
        logger = (yaml.load(text, Loader=loader) or {}).get("logger") or {}
        if logger.get("kind") == "wandb":
            return logger
    return None


def collector_run_id(sweep_dir: Path, select: dict) -> str:
    return config_hash([str(Path(sweep_dir).resolve()), "collect", select])[:16]


def collector_run_name(select: dict) -> str:
    """`collect` plus the rule's differences from conf/select/default.yaml."""
    from omegaconf import OmegaConf

    from ablate.config import select_config

    defaults = OmegaConf.to_container(select_config())
    changed = [f"{key}={value}" for key, value in select.items() if defaults.get(key) != value]
    return " ".join(["collect", *changed]) if changed else "collect (default rule)"


# -------------------------------------------------------------------------------------- tables
def flatten(record: dict, prefix: str = "") -> dict:
    """Nested dicts become dotted keys; lists become JSON text (a W&B Table cell holds one value)."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def rows_table(records: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows) of a list of dicts, flattened; columns in order of first appearance."""
    flat = [flatten(record) for record in records]
    columns = list(dict.fromkeys(key for record in flat for key in record))
    return columns, [[record.get(column) for column in columns] for record in flat]


def is_records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def is_keyed_records(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _nested_records(node, path: str) -> dict[str, list[dict]]:
    """Every list of dicts inside `node`, by its slash-separated path."""
    if is_records(node):
        return {path: node}
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            found |= _nested_records(value, f"{path}/{key}")
    return found


def collector_tables(summary: dict, cells_csv: Path) -> dict[str, tuple[list[str], list[list]]]:
    """W&B Tables of one collection, by key: cells, arms, decisions (one row per scope), every list a
    decision holds (comparisons, ...) with its scope, diagnostics, not_finished, problems."""
    tables = {}
    try:
        import pandas as pd

        cells = pd.read_csv(cells_csv)
        tables["cells"] = (list(cells.columns), cells.astype(object).where(cells.notna(), None).values.tolist())
    except (FileNotFoundError, ValueError):  # no cells.csv (or an empty one): the summary still goes
        pass
    if is_records(summary.get("arms")):
        tables["arms"] = rows_table(summary["arms"])
    scopes = [("all", True, summary.get("decision", {}))]
    scopes += [(name, False, decision) for name, decision in summary.get("slices", {}).items()]
    decisions, lists = [], {}
    for name, is_headline, decision in scopes:
        scope = decision.get("scope", name)
        decisions.append({"scope": scope, "headline": is_headline, "verdict": verdict_of(decision)}
                         | {k: v for k, v in decision.items()
                            if not is_records(v) and not is_keyed_records(v) and k != "scope"})
        for key, value in decision.items():
            if is_records(value):
                lists.setdefault(key, []).extend({"scope": scope} | item for item in value)
            elif is_keyed_records(value):  # {arm: {estimate, ci_low, ...}}: one row per arm
                lists.setdefault(key, []).extend({"scope": scope, "arm": arm} | item for arm, item in value.items())
    tables["decisions"] = rows_table(decisions)
    for key, records in lists.items():
        tables[key] = rows_table(records)
    for path, records in _nested_records(summary.get("diagnostics", {}), "diagnostics").items():
        tables[path] = rows_table(records)
    for key in ("not_finished", "problems"):
        if is_records(summary.get(key)):
            tables[key] = rows_table(summary[key])
    return tables


def collector_summary(summary: dict) -> dict:
    """The collector run's summary: the decision in words and its top-level facts."""
    facts = {key: value for key, value in summary.items()
             if not isinstance(value, dict | list) and key not in ("sweep_dir",)}
    decision = flatten({k: v for k, v in summary.get("decision", {}).items() if not is_records(v)}, "decision.")
    return facts | decision | {"verdict": verdict_of(summary)} | flatten(summary.get("cell_counts", {}), "cells.")


# ------------------------------------------------------------------------------------- publish
def offline_run_dirs(sweep_dir: Path, definition: dict) -> list[Path]:
    """The sweep's offline W&B run directories: under the sweep (cells, collector), and in $WANDB_DIR by run id."""
    sweep_dir = Path(sweep_dir)
    found = list(sweep_dir.glob("cells/*/wandb/offline-run-*")) + list(sweep_dir.glob("wandb/offline-run-*"))
    if os.environ.get("WANDB_DIR"):
        ids = {wandb_run_id(sweep_dir, cell.name) for cell in sweep_dir.glob("cells/*") if cell.is_dir()}
        ids.add(definition.get("collector_run", {}).get("id"))
        found += [path for path in (Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*")
                  if path.name.rsplit("-", 1)[-1] in ids]
    return sorted(set(found), key=lambda path: path.name)  # by start time: resumed runs sync in order


def sync_offline_runs(sweep_dir: Path, definition: dict) -> int:
    """`wandb sync` every offline run of the sweep (wandb skips those synced already); its exit status."""
    dirs = offline_run_dirs(sweep_dir, definition)
    if not dirs:
        print("no offline W&B runs to sync")
        return 0
    print(f"wandb sync: {len(dirs)} offline run(s)", flush=True)
    return subprocess.run([sys.executable, "-m", "wandb", "sync", *map(str, dirs)]).returncode
