"""The sweep's W&B Report (wandb-workspaces, reports v2): its definition, and publishing it.

The definition is plain JSON, written to report/wandb_report.json by every collection whose cells
used logger=wandb, so an offline sweep publishes later (`ablate wandb-report <sweep_dir>`). Each
node `{"wr": "<name>", ...}` is the wandb-workspaces class `wr.<name>` with those keyword arguments;
runsets get the report's entity and project when the report is built (the entity may only be known
online). Two nodes are ablate's own: `{"wr": "RunLink", "text", "run_id"}` (a link to a run of the
project) and `{"wr": "Config", "name"}` (a run's config key as a panel's grouping).

What the report shows, like report.html: the decision in words; the decision metric per arm (mean
over seeds, bars spanning the seeds); training and held-out curves grouped by arm (mean ± stderr
over seeds); per-slice panels; the collector run's tables and plots, linked to that run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ablate.review.tracking import STEP_METRIC
from ablate.sweepdir.atomic import atomic_write_json
from ablate.verdicts import verdict_phrase

FORMAT = "ablate-wandb-report/1"
# Node names a definition may use: the wandb-workspaces classes ablate writes, and nothing else.
WR_CLASSES = {"H2", "H3", "P", "MarkdownBlock", "CalloutBlock", "PanelGrid", "Runset", "BarPlot", "LinePlot",
              "MediaBrowser", "WeavePanelSummaryTable", "Layout"}
FULL_WIDTH = {"wr": "Layout", "w": 24, "h": 10}


def metric_key(metric: str, scope: str | None) -> str | None:
    """The cells' logged key for a decision metric on a scope; None for scopes no cell logs (macro)."""
    if scope in (None, "all"):
        return f"heldout/{metric}"
    if scope == "macro":
        return None
    return f"heldout/{scope}/{metric}"


def headline(summary: dict) -> str:
    phrase = verdict_phrase(summary)
    return phrase[0].upper() + phrase[1:]


def report_definition(summary: dict, *, project: str, entity: str | None, group: str, collector_run: dict,
                      tables: list[str], plots: list[str]) -> dict:
    """The report of one collection: `tables`/`plots` are the collector run's keys for its Tables/images."""
    select = summary.get("select", {})
    metric = select.get("metric", "avglogp_accuracy")
    scope = select.get("slice")
    decision = summary.get("decision", {})
    cells = {"wr": "Runset", "name": "cells", "groupby": ["config.arm"],
             "filters": f"Group = {group!r} and JobType != 'collect'"}
    collector = {"wr": "Runset", "name": "collector run", "filters": f"ID = {collector_run['id']!r}"}

    def by_arm(panel: str, title: str, **args) -> dict:
        spread = "minmax" if panel == "BarPlot" else "stderr"  # bars: the seeds' range; curves: mean ± stderr
        return {"wr": panel, "title": title, "groupby": {"wr": "Config", "name": "arm"}, "groupby_aggfunc": "mean",
                "groupby_rangefunc": spread, **args}

    def curves(key: str, title: str) -> dict:
        return by_arm("LinePlot", title, x=STEP_METRIC, y=[key])

    def metric_panels(key: str | None, label: str) -> list[dict]:
        if key is None:
            return []
        return [by_arm("BarPlot", f"{label} per arm (bars: seed range)", metrics=[key]),
                curves(key, f"{label} during training (mean ± stderr over seeds)")]

    blocks: list[dict] = [
        {"wr": "CalloutBlock", "text": headline(summary)},
        {"wr": "P", "text": summary.get("explanation", "")},
        {"wr": "MarkdownBlock", "text": _rule_and_arms(summary, metric_key(metric, scope))},
        {"wr": "H2", "text": f"{metric} per arm"},
        {"wr": "PanelGrid", "runsets": [cells], "panels": metric_panels(metric_key(metric, scope), metric)
         or metric_panels(metric_key(metric, None), metric)},
        {"wr": "H2", "text": "Training vs held-out"},
        {"wr": "PanelGrid", "runsets": [cells], "panels": [
            curves("rewards/margins", "training margin (rewards/margins, objective's own scale)"),
            curves("heldout/logratio_margin", "held-out log-ratio margin (objective-neutral)"),
            curves("loss", "training loss"),
            curves("heldout/chosen_logp_shift", "held-out chosen log-prob shift"),
        ]},
    ]
    for name, slice_decision in summary.get("slices", {}).items():
        blocks += [{"wr": "H3", "text": f"Slice {name}: {headline(slice_decision).lower()}"},
                   {"wr": "P", "text": _slice_line(slice_decision)}]
        panels = metric_panels(metric_key(metric, name), f"{metric} on {name}")
        blocks += [{"wr": "PanelGrid", "runsets": [cells], "panels": panels}] if panels else []
    blocks += [
        {"wr": "H2", "text": "Collector run: tables and plots"},
        {"wr": "P", "text": ["Every table of the decision is in the ",
                             {"wr": "RunLink", "text": f"collector run ({collector_run['name']})",
                              "run_id": collector_run["id"]},
                             "; report.md and report.html in the sweep's report/ folder say the same."]},
        {"wr": "PanelGrid", "runsets": [collector],
         "panels": [{"wr": "WeavePanelSummaryTable", "table_name": name, "layout": FULL_WIDTH} for name in tables]
         + ([{"wr": "MediaBrowser", "title": "report plots", "media_keys": plots, "layout": FULL_WIDTH}]
            if plots else [])},
    ]
    return {
        "format": FORMAT,
        "project": project,
        "entity": entity,
        "group": group,
        "collector_run": collector_run,
        "title": f"ablate {group} - {headline(summary)}"[:128],
        "description": f"{metric} on {scope or 'all held-out pairs'} ({decision.get('pairs', '?')} pairs); cells: "
                       + ", ".join(f"{n} {state}" for state, n in summary.get("cell_counts", {}).items()),
        "blocks": blocks,
    }


def _rule_and_arms(summary: dict, key: str | None) -> str:
    """The decision rule, and one row per arm with the decision metric's statistics over seeds."""
    select = summary.get("select", {})
    rule = ", ".join(f"{k}={v}" for k, v in select.items())
    lines = [f"Decision rule: `{rule}`", ""]
    rows = []
    estimates = (summary.get("decision") or {}).get("arm_estimates") or {}  # the arm's CI over seeds and pairs
    for arm in summary.get("arms", []):
        stats = (arm.get("stats") or {}).get(key) if key else None
        if isinstance(stats, dict):
            ci = {k: (estimates.get(arm.get("arm")) or {}).get(k) for k in ("ci_low", "ci_high")}
            rows.append((arm.get("arm"), stats | ci))
    if rows:
        columns = list(dict.fromkeys(c for _, stats in rows for c in stats))
        lines += [f"| arm | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {arm} | " + " | ".join(_cell(stats.get(c)) for c in columns) + " |" for arm, stats in rows]
    return "\n".join(lines)


def _slice_line(decision: dict) -> str:
    parts = [f"best arm {decision.get('best_arm')}"]
    for comparison in decision.get("comparisons", []):
        if {"arm", "difference", "ci_low", "ci_high"} <= comparison.keys():
            low, high = _cell(comparison["ci_low"], signed=True), _cell(comparison["ci_high"], signed=True)
            parts.append(f"vs {comparison['arm']}: {_cell(comparison['difference'], signed=True)} [{low}, {high}]")
    return "; ".join(parts)


def _cell(value, signed: bool = False) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:+.3f}" if signed else f"{value:.3f}"


# ---------------------------------------------------------------------------------------- files
def write_definition(path: Path, definition: dict) -> dict:
    """Write the definition, keeping the saved report's id and url so publishing updates that report."""
    try:
        previous = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        previous = {}
    if previous.get("report_id"):  # what saving resolved, unless `definition` says otherwise
        definition = definition | {key: previous.get(key) for key in ("report_id", "url", "entity")
                                    if not definition.get(key)}
    atomic_write_json(Path(path), definition)
    return definition


def read_definition(path: Path) -> dict:
    definition = json.loads(Path(path).read_text())
    if definition.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ablate W&B report definition (format {definition.get('format')!r})")
    return definition


# ------------------------------------------------------------------------------ wandb-workspaces
def build_report(definition: dict):
    """The wandb-workspaces Report object. Needs no network when the definition names its entity."""
    import wandb_workspaces.reports.v2 as wr

    args = {"project": definition["project"], "title": definition["title"],
            "description": definition.get("description", "")}
    if definition.get("entity"):
        args["entity"] = definition["entity"]
    report = wr.Report(**args)  # without an entity, W&B's default entity for the logged-in user
    report.id = definition.get("report_id") or ""

    def build(node):
        if isinstance(node, list):
            return [build(item) for item in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("wr")
        args = {key: build(value) for key, value in node.items() if key != "wr"}
        if kind is None:
            return args
        if kind == "RunLink":  # relative, so it works on wandb.ai and on a dedicated W&B server alike
            return wr.Link(text=args["text"], url=f"/{report.entity}/{report.project}/runs/{args['run_id']}")
        if kind == "Config":
            return wr.Config(args["name"])
        if kind not in WR_CLASSES:
            raise ValueError(f"W&B report definition: unknown node {kind!r}")
        if kind == "Runset":
            args = {"entity": report.entity, "project": report.project} | args
        return getattr(wr, kind)(**args)

    report.blocks = build(definition["blocks"])
    return report


def publish_report(definition: dict, new: bool = False) -> dict:
    """Save the report to W&B, updating the one saved before unless `new`; the definition with its id and url."""
    report = build_report(definition | ({"report_id": None} if new else {}))
    report.save()
    return definition | {"report_id": report.id, "url": report.url, "entity": report.entity}
