"""The report's figures, drawn from summary.json's content and the cells' logs (docs/ARCHITECTURE.md §3, §6).

Each function writes one PNG under `plots_dir` and returns its path, or None when the sweep has
nothing to show for it (no finished cell, no slices, axes not swept). Figures are built with
matplotlib's object API on the Agg canvas: no pyplot, so no global figure registry to leak into
and no GUI backend is ever touched, even when a notebook imports this module.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ablate.collect.decide import confidence, metric_key, scope_label
from ablate.collect.load import Sweep, read_jsonl
from ablate.collect.stats import seed_summary
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import atomic_write_bytes
from ablate.sweepdir.layout import is_finite_number
from ablate.verdicts import verdict_phrase

DPI = 110
MAX_CURVE_ARMS = 12  # reading logs costs one file per cell: a 1000-cell sweep draws its 12 best arms
MAX_ARMS = 30  # beyond this a per-arm axis is unreadable anyway
UNITS = {"avglogp_accuracy": "share of pairs", "logratio_accuracy": "share of pairs",
         "avglogp_margin": "nats/token", "logratio_margin": "nats", "chosen_logp_shift": "nats/token"}
BEST, OTHER, INCOMPLETE = "#d95f02", "#4c72b0", "#9a9a9a"


# ---------------------------------------------------------------- shared helpers

def short_labels(arms: list[str]) -> dict[str, str]:
    """'objective=dpo lora.r=8' -> 'dpo r=8' (the last part of each key); full labels if that collides."""
    def shorten(arm: str) -> str:
        parts = []
        for part in arm.split():
            key, eq, value = part.partition("=")
            parts.append(value if key == "objective" else f"{key.rsplit('.', 1)[-1]}={value}" if eq else part)
        return " ".join(parts)

    short = {arm: shorten(arm) for arm in arms}
    return short if len(set(short.values())) == len(short) else {arm: arm for arm in arms}


def metric_label(metric: str) -> str:
    return f"held-out {metric} ({UNITS.get(metric, 'value')})"


def decisions_by_scope(summary: dict) -> dict[str, dict]:
    """{'all' | slice | 'macro': decision} for every scope the collector decided."""
    return {summary["decision"]["scope"]: summary["decision"], **summary.get("slices", {})}


def slice_names(sweep: Sweep) -> list[str]:
    return sweep.slices


def cell_values(sweep: Sweep, metric: str, scope: str | None) -> pd.Series | None:
    """The metric of every done cell in a scope (index of sweep.done); macro = mean over slices."""
    done = sweep.done
    if scope == "macro":
        cols = [metric_key(metric, s) for s in slice_names(sweep) if metric_key(metric, s) in done]
        return done[cols].astype(float).mean(axis=1) if cols else None
    key = metric_key(metric, None if scope == "all" else scope)
    return done[key].astype(float) if key in done else None


def arm_seed_stats(summary: dict, sweep: Sweep, metric: str, scope: str | None) -> dict[str, dict]:
    """arm -> {n, mean, std, ci_low, ci_high}: mean ± std over the arm's finished seeds, and the CI the
    collector computed for the arm in that scope (seeds and held-out pairs; NaN with one seed)."""
    decision = decisions_by_scope(summary).get(scope or "all") or {}
    estimates = decision.get("arm_estimates", {}) if decision.get("metric") == metric else {}
    values = cell_values(sweep, metric, scope)
    out = {}
    for arm in summary["arms"]:
        name = arm["arm"]
        stats = seed_summary(values[sweep.done.arm == name].tolist() if values is not None else [])
        estimate = estimates.get(name) or {}
        stats["ci_low"], stats["ci_high"] = estimate.get("ci_low", math.nan), estimate.get("ci_high", math.nan)
        out[name] = stats
    return out


def ranked_arms(summary: dict, sweep: Sweep) -> list[str]:
    """Arms by the decision metric in the decision scope, best first; arms without a value last."""
    stats = arm_seed_stats(summary, sweep, summary["select"]["metric"], summary["decision"]["scope"])
    return sorted(stats, key=lambda a: -stats[a]["mean"] if is_finite_number(stats[a].get("mean")) else math.inf)


def base_model_value(sweep: Sweep, key: str) -> float | None:
    """The held-out metric at step 0 (the adapter starts at zero: it is the base model, same for all cells)."""
    for cell_id in sweep.done.cell_id:
        for entry in read_jsonl(sweep, cell_id, layout.EVAL_LOG):
            if entry.get("step") == 0 and is_finite_number(entry.get(key)):
                return float(entry[key])
        return None
    return None




def _seed_note(arm: dict) -> str:
    return "" if arm["complete"] else f" ({arm['done']}/{arm['cells']} seeds)"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # constrained layout already fits everything; "tight" would cost a second full draw
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches=None if fig.get_constrained_layout() else "tight")
    fig.clear()  # free the artists now; the Figure is not in any registry, so nothing else holds it
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------- the four figures

def decision_plot(sweep: Sweep, summary: dict, plots_dir: Path) -> Path | None:
    """Per scope (all pairs, each slice): every arm's mean over seeds with its CI, seeds as dots."""
    if sweep.done.empty:
        return None
    metric = summary["select"]["metric"]
    decisions = decisions_by_scope(summary)
    headline = summary["decision"]["scope"]
    scopes = ["all", *slice_names(sweep)] + (["macro"] if headline == "macro" else [])
    ranked = ranked_arms(summary, sweep)[:MAX_ARMS]
    arms = {a["arm"]: a for a in summary["arms"]}
    labels = short_labels(list(arms))
    y = {arm: len(ranked) - 1 - i for i, arm in enumerate(ranked)}  # best arm on top

    fig = Figure(figsize=(1.2 + 3.6 * len(scopes), 2.0 + 0.45 * len(ranked)), layout="constrained")
    axes = fig.subplots(1, len(scopes), sharex=True, sharey=True, squeeze=False)[0]
    drew_reference = False
    rng = np.random.default_rng(0)  # jitter of the seed dots, fixed so reruns give the same image
    for ax, scope in zip(axes, scopes, strict=True):
        stats, values = arm_seed_stats(summary, sweep, metric, scope), cell_values(sweep, metric, scope)
        decision = decisions.get(scope, {})
        for arm in ranked:
            s = stats[arm]
            color = BEST if arm == decision.get("best_arm") else OTHER if arms[arm]["complete"] else INCOMPLETE
            if values is not None:
                seeds = values[sweep.done.arm == arm].dropna()
                jitter = rng.uniform(-0.12, 0.12, len(seeds))
                ax.scatter(seeds, y[arm] + jitter, s=16, color=color, alpha=0.6, lw=0, zorder=3)
            if is_finite_number(s.get("mean")):
                ci = [s.get("ci_low"), s.get("ci_high")]
                xerr = [[s["mean"] - ci[0]], [ci[1] - s["mean"]]] if all(map(is_finite_number, ci)) else None
                ax.errorbar(s["mean"], y[arm], xerr=xerr, fmt="D", ms=7, color=color, capsize=4, lw=1.6,
                            mfc=color if arms[arm]["complete"] else "white")
        reference = base_model_value(sweep, metric_key(metric, None if scope == "all" else scope))
        if reference is not None and scope != "macro":
            ax.axvline(reference, color="black", ls=":", lw=1.2)
            drew_reference = True
        if metric in ("avglogp_accuracy", "logratio_accuracy"):
            ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel(metric_label(metric))
        ax.grid(axis="x", alpha=0.3)
        mark = " [decision scope]" if scope == headline else ""
        ax.set_title(f"{scope_label(scope)}{mark}\n{verdict_phrase(decision)}", fontsize=10)
    axes[0].set_yticks([y[a] for a in ranked], [labels[a] + _seed_note(arms[a]) for a in ranked])
    axes[0].set_ylabel("arm")
    axes[0].set_ylim(-0.6, len(ranked) - 0.4)
    level = confidence(summary["select"]["alpha"])
    legend = [Line2D([], [], marker="D", color=OTHER, lw=1.6, label=f"mean over seeds, {level} CI"),
              Line2D([], [], marker="o", color=OTHER, lw=0, alpha=0.55, label="one seed"),
              Line2D([], [], marker="D", color=BEST, lw=1.6, label="best arm of the panel")]
    if not all(arms[a]["complete"] for a in ranked):
        legend.append(Line2D([], [], marker="D", color=INCOMPLETE, mfc="white", lw=1.6,
                             label="incomplete arm (not compared)"))
    if drew_reference:
        legend.append(Line2D([], [], color="black", ls=":", label="base model (step 0)"))
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8.5, frameon=False)
    shown = "" if len(ranked) == len(arms) else f" ({len(ranked)} best of {len(arms)} arms)"
    fig.suptitle(f"Which arm is best on held-out pairs? {metric} per arm and scope{shown}", fontsize=12)
    return _save(fig, plots_dir / "decision.png")


def curves_plot(sweep: Sweep, summary: dict, plots_dir: Path) -> Path | None:
    """Per arm: training rewards/margins vs held-out log-ratio margin (top) and the decision metric (bottom)."""
    metric = summary["select"]["metric"]
    scope = summary["decision"]["scope"]
    key = metric_key(metric, None if scope in ("all", "macro") else scope)
    arms = [a for a in ranked_arms(summary, sweep) if (sweep.done.arm == a).any()][:MAX_CURVE_ARMS]
    if not arms:
        return None
    arm_info = {a["arm"]: a for a in summary["arms"]}
    labels = short_labels(list(arm_info))
    logs = {arm: [(read_jsonl(sweep, c, layout.TRAIN_LOG), read_jsonl(sweep, c, layout.EVAL_LOG))
                  for c in sweep.done[sweep.done.arm == arm].cell_id] for arm in arms}
    ncols = min(4, len(arms))
    nblocks = math.ceil(len(arms) / ncols)
    fig = Figure(figsize=(max(4.3 * ncols, 7.5), 1.2 + 5.0 * nblocks), layout="constrained")
    grid = fig.add_gridspec(nblocks, ncols)
    heldout_axes, metric_axes = [], []
    for i, arm in enumerate(arms):
        block, col = divmod(i, ncols)
        panel = grid[block, col].subgridspec(2, 1, height_ratios=[1.25, 1])
        top = fig.add_subplot(panel[0])
        bottom = fig.add_subplot(panel[1], sharex=top)
        twin = top.twinx()
        for train, evals in logs[arm]:
            train = [e for e in train if "rewards/margins" in e]
            top.plot([e["step"] for e in train], [e["rewards/margins"] for e in train], color="#1f77b4", lw=1)
            margin = [e for e in evals if "heldout/logratio_margin" in e]
            twin.plot([e["step"] for e in margin], [e["heldout/logratio_margin"] for e in margin], color="#ff7f0e",
                      lw=1, ls="--", marker=".", ms=4)
            decided = [e for e in evals if key in e]
            bottom.plot([e["step"] for e in decided], [e[key] for e in decided], color="#2ca02c", lw=1, marker=".")
        of = "" if arm_info[arm]["complete"] else f" of {arm_info[arm]['cells']}"
        top.set_title(f"{labels[arm]} ({len(logs[arm])}{of} seeds done)", fontsize=10)
        top.tick_params(axis="y", colors="#1f77b4", labelsize=8)
        twin.tick_params(axis="y", colors="#ff7f0e", labelsize=8)
        top.tick_params(axis="x", labelbottom=False)
        bottom.tick_params(labelsize=8)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        if col == 0:
            top.set_ylabel("training rewards/margins\n(objective's own units)", color="#1f77b4", fontsize=9)
            bottom.set_ylabel(f"held-out {metric}\n{scope_label(scope)}", fontsize=9)
        if col == ncols - 1 or i == len(arms) - 1:
            twin.set_ylabel("held-out log-ratio margin (nats)", color="#ff7f0e", fontsize=9)
        bottom.set_xlabel("training step")
        heldout_axes.append(twin)
        metric_axes.append(bottom)
    for group in (heldout_axes, metric_axes):  # same scale across arms: these metrics mean the same everywhere
        lows, highs = zip(*(ax.get_ylim() for ax in group), strict=True)
        for ax in group:
            ax.set_ylim(min(lows), max(highs))
    legend = [Line2D([], [], color="#1f77b4", lw=1, label="training rewards/margins (one line per seed)"),
              Line2D([], [], color="#ff7f0e", lw=1, ls="--", marker=".", label="held-out log-ratio margin"),
              Line2D([], [], color="#2ca02c", lw=1, marker=".", label=f"held-out {metric} (decision metric)")]
    fig.legend(handles=legend, loc="outside lower center", ncols=3 if ncols >= 3 else 1, frameon=False, fontsize=9)
    shown = "" if len(arms) == len(summary["arms"]) else f" ({len(arms)} best arms)"
    fig.suptitle(f"Training vs held-out margins over training, per arm{shown}\nrising training margins with a "
                 f"flat held-out {metric} suggest overoptimisation", fontsize=11)
    return _save(fig, plots_dir / "curves.png")


def heatmap_plot(sweep: Sweep, summary: dict, plots_dir: Path) -> Path | None:
    """objective x lora.r: the decision metric, mean over seeds (and over any other swept factor)."""
    axes = summary.get("axes", {})
    if "objective" not in axes or "lora.r" not in axes:
        return None
    metric, scope = summary["select"]["metric"], summary["decision"]["scope"]
    stats = arm_seed_stats(summary, sweep, metric, scope)
    objectives = list(axes["objective"])
    ranks = sorted(axes["lora.r"], key=lambda r: float(r) if str(r).replace(".", "", 1).isdigit() else math.inf)
    grid = np.full((len(objectives), len(ranks)), np.nan)
    notes = [["no data"] * len(ranks) for _ in objectives]
    others = [k for k in axes if k not in ("objective", "lora.r")]
    for i, objective in enumerate(objectives):
        for j, rank in enumerate(ranks):
            members = [a for a in summary["arms"] if str(a["axes"].get("objective")) == str(objective)
                       and str(a["axes"].get("lora.r")) == str(rank) and is_finite_number(stats[a["arm"]].get("mean"))]
            if members:
                grid[i, j] = np.mean([stats[a["arm"]]["mean"] for a in members])
                done, cells = sum(a["done"] for a in members), sum(a["cells"] for a in members)
                std = stats[members[0]["arm"]].get("std") if len(members) == 1 else None
                spread = f" ± {std:.3f}" if is_finite_number(std) else ""
                notes[i][j] = f"{grid[i, j]:.3f}{spread}\n{done}/{cells} seeds done"
    if not np.isfinite(grid).any():
        return None
    fig = Figure(figsize=(2.2 + 1.9 * len(ranks), 1.8 + 1.0 * len(objectives)))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    middle = (np.nanmin(grid) + np.nanmax(grid)) / 2  # dark cells get white text
    for i in range(len(objectives)):
        for j in range(len(ranks)):
            dark = np.isfinite(grid[i, j]) and grid[i, j] < middle
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(ranks)), [f"r={r}" for r in ranks])
    ax.set_yticks(range(len(objectives)), objectives)
    ax.set_xlabel("LoRA rank (lora.r)")
    ax.set_ylabel("objective")
    fig.colorbar(image, ax=ax, label=metric_label(metric))
    averaged = f", averaged over {', '.join(others)}" if others else ""
    ax.set_title(f"Held-out {metric} on {scope_label(scope)} by objective and LoRA rank\n"
                 f"mean ± std over seeds{averaged}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plots_dir / "heatmap.png")


def slices_plot(sweep: Sweep, summary: dict, plots_dir: Path) -> Path | None:
    """Grouped bars: one group per held-out slice, one bar per arm (mean over seeds, with its CI)."""
    slices = slice_names(sweep)
    if not slices or sweep.done.empty:
        return None
    metric = summary["select"]["metric"]
    arms = {a["arm"]: a for a in summary["arms"]}
    ranked = ranked_arms(summary, sweep)[:MAX_CURVE_ARMS]
    labels = short_labels(list(arms))
    palette = colormaps["tab10" if len(ranked) <= 10 else "tab20"]
    colors = [palette(i) for i in range(len(ranked))]
    width = 0.8 / len(ranked)
    fig = Figure(figsize=(max(6.0, 1.2 + len(slices) * (0.9 + 0.45 * len(ranked))), 4.6))
    ax = fig.subplots()
    for k, scope in enumerate(slices):
        stats = arm_seed_stats(summary, sweep, metric, scope)
        for i, arm in enumerate(ranked):
            s = stats[arm]
            if not is_finite_number(s.get("mean")):
                continue
            x = k - 0.4 + width * (i + 0.5)
            ci = [s.get("ci_low"), s.get("ci_high")]
            yerr = [[s["mean"] - ci[0]], [ci[1] - s["mean"]]] if all(map(is_finite_number, ci)) else None
            ax.bar(x, s["mean"], width * 0.92, yerr=yerr, capsize=3, color=colors[i],
                   hatch=None if arms[arm]["complete"] else "//", edgecolor="white" if arms[arm]["complete"] else "k")
        reference = base_model_value(sweep, metric_key(metric, scope))
        if reference is not None:
            ax.hlines(reference, k - 0.45, k + 0.45, color="black", ls=(0, (2, 1.5)), lw=2, zorder=3)
    ax.set_xticks(range(len(slices)), slices)
    ax.set_xlabel("held-out slice")
    ax.set_ylabel(metric_label(metric))
    if metric in ("avglogp_accuracy", "logratio_accuracy"):
        ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=colors[i], hatch=None if arms[a]["complete"] else "//",
                     label=labels[a] + _seed_note(arms[a])) for i, a in enumerate(ranked)]
    handles.append(Line2D([], [], color="black", ls=(0, (2, 1.5)), lw=2, label="base model (step 0)"))
    level = confidence(summary["select"]["alpha"])
    ax.legend(handles=handles, title=f"arm (error bar: {level} CI, seeds and pairs)", loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=8.5, title_fontsize=8.5, frameon=False)
    ax.set_title(f"Held-out {metric} per slice and arm: mean over seeds", fontsize=11)
    fig.tight_layout()
    return _save(fig, plots_dir / "slices.png")


def race_plot(sweep: Sweep, summary: dict, plots_dir: Path) -> Path | None:
    """A race's rounds (race.json): each arm's held-out mean at every look it ran, where it was dropped, and the
    cells spent round by round against the fixed designs the report compares it with."""
    race = summary.get("race") or {}
    rounds = [r for r in race.get("rounds") or [] if r.get("point")]
    if not rounds:
        return None
    metric = summary["select"]["metric"]
    factor_of = rounds[-1].get("factor_of") or {}
    last = {arm: value for r in rounds for arm, value in r["point"].items()}  # each arm's mean at its last look
    arms = sorted(last, key=last.get, reverse=True)[:MAX_ARMS]
    labels = short_labels(arms)
    dropped = {arm: r for r in rounds for arm in r.get("drops", {})}
    colors = colormaps["tab10"]

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    means, cells = fig.subplots(1, 2, width_ratios=[3, 2])
    for i, arm in enumerate(arms):
        looks = [r for r in rounds if arm in r["point"]]
        winner = race.get("winner") is not None and factor_of.get(arm, arm) == race.get("winner")
        color = colors(i % 10)
        means.plot([r["n"] for r in looks], [r["point"][arm] for r in looks], marker="o", color=color,
                   lw=2.6 if winner else 1.4, label=labels[arm] + (" (winner)" if winner else ""))
        if arm in dropped:
            r = dropped[arm]
            means.scatter([r["n"]], [r["point"][arm]], marker="X", s=110, color=color, edgecolor="black", zorder=4)
    means.set_xlabel("seeds per live arm (one look per round)")
    pairs = "validation" if race.get("tuning") else "held-out"  # a tuning race looks on the validation pairs
    means.set_ylabel(metric_label(metric).replace("held-out", pairs, 1))
    means.set_xticks(sorted({r["n"] for r in rounds}))
    means.grid(alpha=0.3)
    handles, _ = means.get_legend_handles_labels()
    if dropped:
        handles.append(Line2D([], [], marker="X", color="white", markeredgecolor="black", markerfacecolor="gray",
                              markersize=9, label="dropped at this look"))
    means.legend(handles=handles, fontsize=8, frameon=False, loc="best")
    stop = rounds[-1].get("stop")
    ended = (f"winner {race['winner']}" if stop == "winner" else stop) if stop else "in progress"
    means.set_title(f"{pairs.capitalize()} mean of each arm at each look ({ended} after round {rounds[-1]['round']})",
                    fontsize=10)

    spent = np.cumsum([len(r.get("new_cells", [])) for r in rounds])
    cells.plot([r["round"] for r in rounds], spent, color=BEST, lw=2, marker="o", label="race: cells spent so far")
    for value, label, style in ((race.get("fixed_cells"), "every seed up to max_seeds", "--"),
                                (race.get("same_power_cells"), "fixed design planned at round 1's differences", ":")):
        if value:
            cells.axhline(value, color=OTHER, ls=style, lw=1.4, label=f"{label}: {value}")
    cells.set_xlabel("round")
    cells.set_ylabel("cells (runs) in all")
    cells.set_xticks([r["round"] for r in rounds])
    cells.set_ylim(bottom=0)
    cells.grid(alpha=0.3)
    cells.legend(fontsize=8, frameon=False, loc="lower right")
    cells.set_title("Compute spent", fontsize=10)
    return _save(fig, plots_dir / "race.png")


def all_plots(sweep: Sweep, summary: dict, plots_dir: Path) -> dict[str, Path]:
    """{name: path} of every figure this sweep has data for; a figure it no longer has is removed."""
    plots_dir = Path(plots_dir)
    drawn = {name: draw(sweep, summary, plots_dir) for name, draw in
             (("decision", decision_plot), ("slices", slices_plot), ("heatmap", heatmap_plot),
              ("curves", curves_plot), ("race", race_plot))}
    for name, path in drawn.items():
        if path is None:  # e.g. collected again with another select.slice: no stale image left to mislead
            (plots_dir / f"{name}.png").unlink(missing_ok=True)
    return {name: path for name, path in drawn.items() if path is not None}
