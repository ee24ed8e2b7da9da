"""The tuned comparison's part of report.md / report.html: split sizes, budget, selected settings, the
tuned and shared-default decisions side by side, edge warnings and the sensitivity plot."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from ablate.collect.decide import confidence, scope_label
from ablate.collect.plots import _save
from ablate.sweepdir.layout import is_finite_number

CAPTION = ("Sensitivity: validation {metric} (mean over seeds, bars: seed std) against each tuned key, one line per "
           "setting of the objective's other keys; the star marks the selected setting. Validation pairs only.")




def _fmt(x, spec: str = ".3f") -> str:
    return format(x, spec) if is_finite_number(x) else "n/a"


def _verdict(d: dict | None, level: str) -> str:
    if not d or d.get("verdict") == "not run":
        return "not run: " + "; ".join((d or {}).get("reasons", [])) if d else "not run"
    best = d.get("best_objective")
    rivals = [c for c in d.get("comparisons", []) if c["arm"] in d.get("rivals", [])]
    detail = "; ".join(f"vs {c['arm']}: {_fmt(c['difference'], '+.3f')}" + (
        f", {level} CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if is_finite_number(c["ci_low"])
        and is_finite_number(c["ci_high"])
        else ", no CI") for c in rivals)
    head = {"exploratory": f"exploratory lead {d.get('lead')} (confirm it on fresh seeds: ablate confirm)",
            "not decisive": f"no decisive winner (best {best})"}.get(
        d["verdict"], f"undetermined (best {best})" if best else "undetermined")
    why = f" — {'; '.join(d['reasons'])}" if d["verdict"] == "undetermined" and d.get("reasons") else ""
    return f"{head}; {detail}{why}" if detail else head + why


def _sizes(split: dict) -> str:
    def part(name):
        s = split[name]
        slices = ", ".join(f"{k} {v}" for k, v in s["slices"].items())
        return f"{s['pairs']} {name} pairs" + (f" ({slices})" if slices else "")
    return f"{part('validation')} and {part('test')}"


def tuning_blocks(summary: dict, plots: dict[str, Path]) -> list[tuple]:
    tuning, select = summary["tuning"], summary["select"]
    level = confidence(select["alpha"])
    headline = summary["decision"]["scope"]
    blocks: list[tuple] = [("h2", "Tuned comparison: each objective at its best setting")]
    if tuning.get("split"):
        blocks.append(("p", f"Held-out pairs split once by data.split_seed into {_sizes(tuning['split'])}. Each "
                            f"objective's setting was selected on the validation pairs only (best seed-mean "
                            f"{select['metric']} on {scope_label(headline)}; ties: the default setting, then the "
                            f"fewest keys off their defaults, then the first in the search space). The test pairs "
                            f"played no part in selection: they decide the comparisons below, with the same "
                            f"seed-aware rule as the rest of this report."))
    budget = tuning.get("budget") or {}
    if budget:
        blocks.append(("p", "Budget per objective: " + "; ".join(
            f"{o} {b['settings']} settings x {b['seeds']} seeds = {b['cells']} cells" for o, b in budget.items())
            + " (equal, or the sweep would have been refused)."))
    for reason in tuning.get("reasons", []):
        blocks.append(("callout", f"No tuned comparison: {reason}", False))
    for group in tuning.get("groups", []):
        where = " ".join(f"{k}={v}" for k, v in group["group"].items())
        if where:
            blocks.append(("h3", f"At {where}"))
        tuned = group["tuned"].get(headline)
        blocks.append(("callout", f"Tuned, on test pairs: {_verdict(tuned, level)}",
                       bool(tuned and tuned.get("decisive"))))
        rows = []
        for o, e in group["selection"].items():
            table = {tuple(r["setting"].items()): r for r in e["table"]}
            picked = table.get(tuple((e["selected"] or {}).items()))
            rows.append([o, " ".join(f"{k}={v}" for k, v in (e["selected"] or {}).items()) or "none",
                         " ".join(f"{k}={v}" for k, v in e["default"].items())
                         + ("" if e["default_in_space"] else " (not in the space)"),
                         f"{_fmt(picked['mean'])} ± {_fmt(picked['std'])} ({len(picked['seeds'])} seeds)" if picked
                         else "-", ", ".join(e["tied"]) or "-", ", ".join(e["missing"]) or "-",
                         ", ".join(e.get("dropped_by_race", [])) or "-"])
        blocks.append(("table", ["objective", "selected setting", "default setting", f"validation {select['metric']}",
                                 "tied settings", "settings without evidence", "dropped by the tuning race"], rows,
                       []))
        rows = [[scope_label(None if s == "all" else s), _verdict(t, level), _verdict(group["at_defaults"].get(s),
                                                                                       level)]
                for s, t in group["tuned"].items()]
        blocks.append(("p", f"Decisions on the test pairs, per scope: each objective tuned vs all at their shared "
                            f"defaults (the answer an untuned ablation gives). Metric {select['metric']}."))
        blocks.append(("table", ["scope", "tuned (selected settings)", "at shared defaults"], rows, []))
    if tuning.get("warnings"):
        blocks.append(("p", "Selected values on the edge of their search space (widen the space to be sure):"))
        blocks.append(("list", tuning["warnings"]))
    if "sensitivity" in plots:
        blocks.append(("img", CAPTION.format(metric=select["metric"]), plots["sensitivity"]))
    return blocks


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def sensitivity_plot(summary: dict, plots_dir: Path) -> Path | None:
    """One panel per (objective, tuned key) of the first group: validation metric against the key's values."""
    tuning = summary.get("tuning") or {}
    groups = tuning.get("groups") or []
    if not groups:
        return None
    group, spaces = groups[0], tuning["spaces"]
    panels = [(o, k) for o in spaces for k in spaces[o] if group["selection"].get(o, {}).get("table")]
    if not panels:
        return None
    columns = max(len(spaces[o]) for o, _ in panels)
    objectives = list(dict.fromkeys(o for o, _ in panels))
    fig = Figure(figsize=(4.2 * columns, 3.2 * len(objectives)), constrained_layout=True)
    axes = fig.subplots(len(objectives), columns, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for row, objective in enumerate(objectives):
        entry = group["selection"][objective]
        space = spaces[objective]
        for col, key in enumerate(space):
            ax = axes[row][col]
            ax.set_visible(True)
            values = space[key]
            numbers = _numbers(values)
            log = bool(numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 10)
            x_of = dict(zip(values, numbers if numbers else range(len(values)), strict=True))
            others = [k for k in space if k != key]
            lines: dict[tuple, list] = {}
            for r in entry["table"]:
                lines.setdefault(tuple(r["setting"][k] for k in others), []).append(r)
            for label, rows in lines.items():
                rows = sorted(rows, key=lambda r: values.index(r["setting"][key]))
                xs = [x_of[r["setting"][key]] for r in rows]
                ys = [r["mean"] if is_finite_number(r["mean"]) else math.nan for r in rows]
                err = [r["std"] if is_finite_number(r["std"]) else 0.0 for r in rows]
                name = " ".join(f"{k}={v}" for k, v in zip(others, label, strict=True)) or objective
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            picked = next((r for r in entry["table"] if r["setting"] == entry["selected"]), None)
            if picked:
                ax.plot([x_of[picked["setting"][key]]], [picked["mean"]], marker="*", markersize=16, color="black",
                        linestyle="none", zorder=5)
            if log:
                ax.set_xscale("log")
            if not numbers:
                ax.set_xticks(list(range(len(values))), values)
            ax.set_xlabel(key)
            ax.set_ylabel(f"validation {summary['select']['metric']}")
            ax.set_title(objective)
            if len(lines) > 1:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    path = Path(plots_dir)
    path.mkdir(parents=True, exist_ok=True)
    return _save(fig, path / "sensitivity.png")

