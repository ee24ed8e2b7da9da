"""The collector's W&B review (offline, run files read back): one collector run per decision rule with
the decision, tables and plots; the report definition; nothing when the cells did not use W&B; a W&B
failure is a warning. The whole path from a real 2-cell sweep is the bar test at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from conftest import TINY
from sweep_fixtures import golden_sweep
from wandb_records import offline_runs

from ablate.collect import collect
from ablate.config import select_config
from ablate.review.collector_run import DEFINITION, collector_run_id, collector_tables

WANDB_LOGGER = "logger:\n  kind: wandb\n  project: ablate-test\n  entity: null\n  group: null\n  mode: offline\n" \
               "  tags: []\n  init_timeout: 30\n  finish_timeout: 30\n"


def wandb_sweep(sweep_dir: Path) -> Path:
    """The golden 2x2x3 sweep (tests/sweep_fixtures.py) whose cells logged to W&B offline."""
    golden_sweep(sweep_dir)
    for cell_dir in (sweep_dir / "cells").iterdir():
        (cell_dir / "config.yaml").write_text(WANDB_LOGGER)
    return sweep_dir


def logged(run, kind: str) -> dict:
    """The run's summary entries of one media type (table-file, image-file), by key."""
    return {key: value for key, value in run.summary.items() if isinstance(value, dict) and value.get("_type") == kind}


def table_file(run_dir: Path, entry: dict) -> dict:
    """The JSON of a logged W&B Table (columns, data), from the run's files/."""
    return json.loads((run_dir / "files" / entry["path"]).read_text())


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("WANDB_DIR")  # run files under the sweep (<sweep>/wandb: report/ is replaced at every collection)
    sweep_dir = wandb_sweep(tmp_path_factory.mktemp("wandb_golden"))
    summary = collect(sweep_dir)
    mp.undo()
    return sweep_dir, summary


def test_collector_run_carries_the_decision_tables_and_plots(collected):
    sweep_dir, summary = collected
    runs = offline_runs(sweep_dir / "wandb")
    assert len(runs) == 1
    path, run = runs[0]
    assert run.run_id == collector_run_id(sweep_dir, summary["select"])
    assert (run.project, run.group, run.job_type, run.name) == ("ablate-test", sweep_dir.name, "collect",
                                                                "collect (default rule)")
    assert run.config["select"] == summary["select"]
    # the decision in the summary
    assert (run.summary["verdict"], run.summary["winner"], run.summary["decisive"]) == ("decisive", "dpo", True)
    assert run.summary["explanation"] == summary["explanation"]
    assert run.summary["decision.best_arm"] == "objective=dpo lora.r=16" and run.summary["cells.done"] == 12
    # the tables, generically flattened
    tables = logged(run, "table-file")
    assert {"cells", "arms", "decisions", "comparisons", "diagnostics/overoptimisation", "diagnostics/length",
            "diagnostics/chosen_logp_shift", "diagnostics/factorial/main_effects"} <= set(tables)
    arms = table_file(path.parent, tables["arms"])
    assert len(arms["data"]) == 4
    assert {"arm", "stats.heldout/avglogp_accuracy.mean", "stats.heldout/avglogp_accuracy.std",
            "stats.heldout/clean/avglogp_accuracy.mean", "axes.objective", "seeds"} <= set(arms["columns"])
    estimates = table_file(path.parent, tables["arm_estimates"])  # each arm's CI, per scope
    assert {"scope", "arm", "estimate", "ci_low", "ci_high", "seeds"} <= set(estimates["columns"])
    assert len(estimates["data"]) == 4 * 3
    decisions = table_file(path.parent, tables["decisions"])
    assert [row[:2] for row in decisions["data"]] == [["all", True], ["clean", False], ["verbose_rejected", False]]
    comparisons = table_file(path.parent, tables["comparisons"])
    assert comparisons["columns"][0] == "scope" and "p_improvement" in comparisons["columns"]
    assert len(table_file(path.parent, tables["cells"])["data"]) == 12
    # the report's plots, as images
    assert set(logged(run, "image-file")) == {f"plots/{p.stem}" for p in (sweep_dir / "report" / "plots").glob("*.png")}
    definition = json.loads((sweep_dir / "report" / DEFINITION).read_text())
    assert definition["collector_run"] == {"id": run.run_id, "name": run.name}
    assert definition["group"] == sweep_dir.name and "report_id" not in definition


def test_one_collector_run_per_decision_rule(collected, monkeypatch):
    sweep_dir, summary = collected
    monkeypatch.delenv("WANDB_DIR")
    collect(sweep_dir, plots=False)  # same rule: the same run, resumed
    clean = collect(sweep_dir, select_config(["slice=clean", "alpha=0.01"]), plots=False)
    runs = [run for _, run in offline_runs(sweep_dir / "wandb")]
    first = collector_run_id(sweep_dir, summary["select"])
    assert [run.run_id for run in runs].count(first) == 2
    other = [run for run in runs if run.run_id != first]
    assert len(other) == 1 and other[0].name == "collect slice=clean alpha=0.01"
    assert other[0].run_id == collector_run_id(sweep_dir, clean["select"])
    definition = json.loads((sweep_dir / "report" / DEFINITION).read_text())
    assert definition["collector_run"]["id"] == other[0].run_id  # the report follows the latest collection


def test_no_wandb_without_logger_wandb(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    collect(sweep_dir, plots=False)
    assert not (sweep_dir / "report" / DEFINITION).exists()
    assert not list(tmp_path.rglob("*.wandb"))


def test_a_wandb_failure_is_a_warning_and_the_definition_is_still_written(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise wandb.errors.CommError("quota exceeded")

    monkeypatch.setattr(wandb, "init", broken)
    sweep_dir = wandb_sweep(tmp_path / "sweep")
    summary = collect(sweep_dir, plots=False)
    assert summary["winner"] == "dpo" and (sweep_dir / "report" / "summary.json").exists()
    assert "W&B: no run for the collector (CommError: quota exceeded)" in caplog.text
    assert json.loads((sweep_dir / "report" / DEFINITION).read_text())["format"].startswith("ablate-wandb-report")


class OnlineRun:
    """A real (offline) run that says it is online: the collector then saves the report."""

    offline = disabled = False

    def __init__(self, run):
        self._run = run

    def __getattr__(self, name):
        return getattr(self._run, name)


def test_an_online_collection_saves_the_report_and_prints_its_url(tmp_path, monkeypatch, capsys):
    import wandb_workspaces.reports.v2 as wr
    from test_wandb_report import StubApi

    from ablate.review import collector_run, tracking

    requests: list = []
    monkeypatch.setattr(wr.interface, "_get_api", lambda: StubApi(requests))
    monkeypatch.setattr(collector_run, "start_run", lambda *a, **k: OnlineRun(tracking.start_run(*a, **k)))
    sweep_dir = wandb_sweep(tmp_path / "sweep")
    collect(sweep_dir, plots=False)
    definition = json.loads((sweep_dir / "report" / DEFINITION).read_text())
    assert definition["report_id"] and definition["entity"] == "default-ent"
    assert f"W&B Report: {definition['url']}" in capsys.readouterr().out
    assert sum("upsertView" in query for query, _ in requests) == 1


def test_fields_the_collector_adds_reach_the_tables():
    """The summary's schema changes (#7): new fields become columns and tables with no change here."""
    summary = {
        "verdict": "undetermined",
        "arms": [{"arm": "a", "stats": {"heldout/x": {"mean": 0.5, "new_stat": 1}}, "seeds": [0, 1]},
                 {"arm": "b", "new_field": {"deep": {"er": "y"}}}],
        "decision": {"verdict": "undetermined", "seeds_needed": 5, "comparisons": [{"arm": "b", "tost": {"p": 0.2}}],
                     "equivalences": [{"arm": "b", "equivalent": True}]},
        "slices": {"clean": {"decisive": True, "comparisons": [{"arm": "b", "difference": 0.1}]}},
        "diagnostics": {"calibration": [{"split": 1, "false_decisive": 0}],
                        "factorial": {"main_effects": [{"factor": "r"}], "complete": True}},
        "problems": [{"file": "f", "problem": "p"}],
    }
    tables = collector_tables(summary, Path("/nonexistent/cells.csv"))
    assert set(tables) == {"arms", "decisions", "comparisons", "equivalences", "diagnostics/calibration",
                           "diagnostics/factorial/main_effects", "problems"}
    columns, rows = tables["arms"]
    assert columns == ["arm", "stats.heldout/x.mean", "stats.heldout/x.new_stat", "seeds", "new_field.deep.er"]
    assert rows[1] == ["b", None, None, None, "y"]
    columns, rows = tables["decisions"]
    assert columns[:4] == ["scope", "headline", "verdict", "seeds_needed"]
    assert rows[0][:4] == ["all", True, "undetermined", 5]
    assert rows[1][:3] == ["clean", False, "decisive"]  # a decision without `verdict` falls back on `decisive`
    columns, rows = tables["comparisons"]
    assert columns == ["scope", "arm", "tost.p", "difference"] and [r[0] for r in rows] == ["all", "clean"]


# ----------------------------------------------------------------------------------- the bar
SECRET = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.mark.slow
def test_two_cell_sweep_reviewed_offline(repo_root, tmp_path):
    """`python -m ablate -m objective=dpo,simpo logger=wandb` offline: 2 cell runs + 1 collector run in one
    group, configs carry the arm, tags the swept values, the collector run the decision; report/
    wandb_report.json exists; the API key appears in no file."""
    sweep_dir, wandb_dir = tmp_path / "sweep", tmp_path / "wandb"
    env = os.environ | {"WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "objective=dpo,simpo", "seed=0", "logger=wandb",
                           "logger.project=ablate-bar", f"hydra.sweep.dir={sweep_dir}", *TINY],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = [run for _, run in offline_runs(wandb_dir)]
    cells = sorted((run for run in runs if run.job_type != "collect"), key=lambda run: run.name)
    collectors = [run for run in runs if run.job_type == "collect"]
    assert len(cells) == 2 and len(collectors) == 1
    assert {run.group for run in runs} == {sweep_dir.name} and {run.project for run in runs} == {"ablate-bar"}
    assert [(run.job_type, run.name, run.tags, run.config["arm"]) for run in cells] == [
        ("dpo", "dpo seed=0", ["objective=dpo"], "objective=dpo"),
        ("simpo", "simpo seed=0", ["objective=simpo"], "objective=simpo")]
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    collector = collectors[0]
    assert collector.summary["winner"] == summary["winner"]
    assert collector.summary["explanation"] == summary["explanation"]
    assert collector.summary["verdict"] in ("decisive", "not decisive", "undetermined")
    definition = json.loads((sweep_dir / "report" / DEFINITION).read_text())
    assert definition["collector_run"]["id"] == collector.run_id
    assert f"ablate wandb-report {sweep_dir} --sync" in proc.stdout  # how to publish later
    tables = sorted(wandb_dir.rglob("generations_*.table.json"))  # each cell's generations, as a W&B table
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert {"prompt", "text", "tokens", "correct"} <= set(table["columns"]) and len(table["data"]) == 32
    leaks = [str(p) for root in (sweep_dir, wandb_dir) for p in root.rglob("*")
             if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
