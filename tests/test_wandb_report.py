"""The W&B Report of a sweep (wandb-workspaces reports v2), built and published without a network: the
report's API lookups are stubbed where wandb-workspaces' own tests stub them (`interface._get_api`)."""

from __future__ import annotations

import json

import pytest
import wandb_workspaces.reports.v2 as wr
from sweep_fixtures import golden_sweep

from ablate.cli import main
from ablate.collect import collect
from ablate.review.collector_run import DEFINITION, offline_run_dirs
from ablate.review.tracking import STEP_METRIC, wandb_run_id
from ablate.review.wandb_report import build_report, read_definition, report_definition, write_definition

TABLES = ["cells", "arms", "decisions", "comparisons", "diagnostics/overoptimisation"]
PLOTS = ["plots/decision", "plots/curves"]
COLLECTOR = {"id": "c0ffee", "name": "collect (default rule)"}


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return collect(golden_sweep(tmp_path_factory.mktemp("golden")), plots=False)


def definition_of(summary, entity="ent") -> dict:
    return report_definition(summary, project="proj", entity=entity, group="sweep-1", collector_run=COLLECTOR,
                             tables=TABLES, plots=PLOTS)


class StubApi:
    """What Report.save() and Runset._to_model() ask W&B's API, answered; every request is recorded."""

    default_entity = "default-ent"

    def __init__(self, requests: list, fail: bool = False):
        class Service:
            app_url = "https://wandb.test"

            def execute_graphql(self, query, variables=None):
                requests.append((query, variables))
                if fail:
                    raise ConnectionError("no route to host")
                if "internalId" in query:
                    return {"project": {"internalId": "UHJvamVjdDox"}}
                if "upsertView" in query:
                    view_id = variables["id"] or f"VmlldzoxMj{len(requests)}="
                    return {"upsertView": {"view": {"id": view_id, "displayName": variables["displayName"],
                                                    "spec": variables["spec"], "project": {
                                                        "name": variables["projectName"],
                                                        "entityName": variables["entityName"]}}}}
                raise AssertionError(f"unexpected request {query[:80]}")

        self._service_api = Service()  # where wandb-workspaces sends GraphQL with wandb >= 0.31

    def projects(self, entity):
        return []

    def create_project(self, project, entity):
        pass


@pytest.fixture
def api(monkeypatch):
    requests: list = []
    monkeypatch.setattr(wr.interface, "_get_api", lambda: StubApi(requests))
    return requests


def test_report_is_built_offline_with_curves_grouped_by_arm(summary, monkeypatch):
    monkeypatch.setattr(wr.interface, "_get_api", lambda: pytest.fail("the report needs no network to be built"))
    report = build_report(definition_of(summary))
    assert (report.entity, report.project) == ("ent", "proj")
    assert report.title == "ablate sweep-1 - Decisive winner dpo"
    kinds = [type(block).__name__ for block in report.blocks]
    assert kinds[:3] == ["CalloutBlock", "P", "MarkdownBlock"]
    assert report.blocks[1].text == summary["explanation"]
    assert "| objective=dpo lora.r=16 | 3 | 0.850 |" in report.blocks[2].text  # arm, seeds, mean
    grids = [block for block in report.blocks if isinstance(block, wr.PanelGrid)]
    cell_grids, collector_grid = grids[:-1], grids[-1]
    for grid in cell_grids:
        (runset,) = grid.runsets
        assert (runset.entity, runset.project, runset.groupby) == ("ent", "proj", ["config.arm"])
        assert runset.filters == "Group = 'sweep-1' and JobType != 'collect'"
        for panel in grid.panels:
            assert panel.groupby == wr.Config("arm") and panel.groupby_aggfunc == "mean"
    bars, curves = cell_grids[0].panels
    assert isinstance(bars, wr.BarPlot) and bars.metrics == ["heldout/avglogp_accuracy"]
    assert bars.groupby_rangefunc == "minmax"  # the seeds' spread
    assert isinstance(curves, wr.LinePlot) and curves.x == STEP_METRIC and curves.groupby_rangefunc == "stderr"
    assert [panel.y for panel in cell_grids[1].panels] == [
        ["rewards/margins"], ["heldout/logratio_margin"], ["loss"], ["heldout/chosen_logp_shift"]]
    slice_metrics = [grid.panels[0].metrics for grid in cell_grids[2:]]
    assert slice_metrics == [["heldout/clean/avglogp_accuracy"], ["heldout/verbose_rejected/avglogp_accuracy"]]
    headings = [block.text for block in report.blocks if isinstance(block, wr.H3)]
    assert headings == ["Slice clean: no decisive winner",
                        "Slice verbose_rejected: exploratory lead dpo (not a decisive claim)"]
    (collector,) = collector_grid.runsets
    assert collector.filters == "ID = 'c0ffee'"
    *tables, media = collector_grid.panels
    assert [t.table_name for t in tables] == TABLES and media.media_keys == PLOTS
    link = next(block for block in report.blocks if isinstance(block, wr.P) and isinstance(block.text, list))
    assert any(isinstance(part, wr.Link) and part.url == "/ent/proj/runs/c0ffee" for part in link.text)


def test_wandb_report_publishes_then_updates_the_same_report(summary, tmp_path, api, capsys):
    path = tmp_path / "report" / DEFINITION
    path.parent.mkdir()
    write_definition(path, definition_of(summary, entity=None))  # entity: the user's default, known online

    assert main(["wandb-report", str(tmp_path)]) == 0
    saved = read_definition(path)
    assert saved["report_id"] and saved["entity"] == "default-ent"
    assert capsys.readouterr().out.strip() == f"W&B Report: {saved['url']}"
    assert saved["url"].startswith("https://wandb.test/default-ent/proj/reports/")
    upserts = [variables for query, variables in api if "upsertView" in query]
    assert upserts[0]["id"] is None and upserts[0]["displayName"] == saved["title"]
    spec = json.loads(upserts[0]["spec"])  # what W&B stores: the panels and their grouping
    grids = [block for block in spec["blocks"] if block["type"] == "panel-grid"]
    runset = grids[0]["metadata"]["runSets"][0]
    assert runset["grouping"] == [{"section": "config", "name": "arm.value"}]
    assert runset["project"] == {"name": "proj", "entityName": "default-ent", "id": "UHJvamVjdDox"}
    bar = grids[0]["metadata"]["panelBankSectionConfig"]["panels"][0]
    assert bar["viewType"] == "Bar Chart" and bar["config"]["groupBy"] == "arm.value"

    write_definition(path, definition_of(summary))  # a new collection keeps the report's id ...
    assert main(["wandb-report", str(tmp_path)]) == 0
    upserts = [variables for query, variables in api if "upsertView" in query]
    assert upserts[-1]["id"] == saved["report_id"]  # ... so publishing updates that report
    assert main(["wandb-report", str(tmp_path), "--new"]) == 0
    upserts = [variables for query, variables in api if "upsertView" in query]
    assert upserts[-1]["id"] is None and read_definition(path)["report_id"] != saved["report_id"]


def test_wandb_report_needs_a_definition(tmp_path, capsys):
    assert main(["wandb-report", str(tmp_path)]) == 2
    assert "logger=wandb" in capsys.readouterr().err


def test_a_failed_publication_keeps_the_definition(summary, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wr.interface, "_get_api", lambda: StubApi([], fail=True))
    path = tmp_path / "report" / DEFINITION
    path.parent.mkdir()
    written = write_definition(path, definition_of(summary))
    assert main(["wandb-report", str(tmp_path)]) == 1
    assert "could not save the report (ConnectionError: no route to host)" in capsys.readouterr().err
    assert read_definition(path) == written


def test_offline_run_dirs_of_a_sweep(tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    mine = sweep_dir / "cells" / "abc" / "wandb" / "offline-run-20260101_000000-x1"
    collector = sweep_dir / "wandb" / "offline-run-20260101_000002-c0ffee"
    elsewhere = tmp_path / "wandb_dir" / "wandb"
    by_id = elsewhere / f"offline-run-20260101_000001-{wandb_run_id(sweep_dir, 'def')}"
    other_sweep = elsewhere / "offline-run-20260101_000003-0123456789abcdef"
    for path in (mine, collector, by_id, other_sweep, sweep_dir / "cells" / "def"):
        path.mkdir(parents=True)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    assert offline_run_dirs(sweep_dir, {"collector_run": COLLECTOR}) == [mine, by_id, collector]
