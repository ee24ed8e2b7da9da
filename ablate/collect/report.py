"""report.md and a self-contained report.html from the summary (docs/ARCHITECTURE.md §3, §6).

The report is built once as a list of blocks (heading, paragraph, list, table, image) and rendered
twice, so the Markdown and the HTML can never say different things. Nothing is hidden: unfinished
cells, their errors and unreadable files are listed; a missing analysis says why it is missing.
The HTML embeds its images as data URIs and its CSS inline: one file to mail or attach to a PR.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from ablate.collect.decide import confidence, scope_label
from ablate.collect.diagnostics import exclusion_line
from ablate.collect.load import Sweep
from ablate.collect.plots import all_plots, arm_seed_stats, decisions_by_scope, slice_names
from ablate.sweepdir.atomic import atomic_write_text
from ablate.verdicts import verdict_of

PLOT_CAPTIONS = {
    "decision": "Decision metric per arm and scope: mean over seeds with its {level} CI (seeds and held-out pairs), "
                "seeds as dots.",
    "slices": "Decision metric per held-out slice: one bar per arm, {level} CI (seeds and held-out pairs).",
    "heatmap": "Decision metric by objective and LoRA rank, mean over seeds.",
    "curves": "Training rewards/margins vs held-out margin and decision metric over training, per arm.",
    "race": "The race's rounds: each arm's held-out mean at every look it ran (a cross where it was dropped), and "
            "the cells spent round by round against the fixed designs.",
}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f2f2f2}
tr.flag td{background:#fff3cd}figcaption{font-weight:600}
.callout{font-size:1.25em;font-weight:600;padding:.6em .9em;border-radius:6px;margin:.8em 0}
.yes{background:#e6f4ea;border:2px solid #2e7d32}.no{background:#fff4e5;border:2px solid #c77700}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0 1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
pre{background:#f6f8fa;padding:.6em .9em;border-radius:6px;overflow-x:auto}"""


# ---------------------------------------------------------------- formatting

def missing(x) -> bool:
    """No value to show: None, pandas' NA, NaN or inf (a string or a count is a value)."""
    return x is None or x is pd.NA or (isinstance(x, float) and not math.isfinite(x))


def fmt(x, digits: int = 3) -> str:
    if missing(x):
        return "—"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def ci(low, high) -> str:
    return "—" if missing(low) or missing(high) else f"[{fmt(low)}, {fmt(high)}]"


def mean_std(stats: dict | None) -> str:
    if not stats or missing(stats.get("mean")):
        return "—"
    return fmt(stats["mean"]) + ("" if missing(stats.get("std")) else f" ± {fmt(stats['std'])}")


def one_line(text) -> str:
    return "" if text is None or (isinstance(text, float) and math.isnan(text)) else " ".join(str(text).split())


# ---------------------------------------------------------------- content

def build_blocks(sweep: Sweep, summary: dict, plots: dict[str, Path]) -> list[tuple]:
    select, decision = summary["select"], summary["decision"]
    metric, headline = select["metric"], decision["scope"]
    level = confidence(select["alpha"])
    counts = summary["cell_counts"]
    total = sum(counts.values())
    blocks: list[tuple] = [
        ("h1", f"Sweep report: {Path(summary['sweep_dir']).name}"),
        ("p", f"Sweep directory: {summary['sweep_dir']} (collected {summary['collected_at']})."),
        ("p", f"{total} cells" + "".join(f"{', ' if i else ': '}{n} {state}"
                                          for i, (state, n) in enumerate(sorted(counts.items())))
         + ("." if summary["complete"] else ". Not every cell is done: arms are compared on their finished seeds, "
                                            "and the decision may change when the rest finish.")),
        ("p", f"Decision rule: held-out {metric} on {scope_label(headline)}, comparing values of "
              f"{select['factor']}. The seed is the unit of replication: arms are compared seed by seed on the same "
              f"held-out pairs, with {level} CIs that count the variance between training runs and between held-out "
              f"pairs. Decisive = every rival's CI above 0, at least {select['min_seeds']} seeds behind each "
              f"comparison, and a gain of at least {select['min_extra_pairs']} held-out pairs (accuracy) or "
              f"{select['min_margin_gain']} (margins). This is the sweep's primary test, fixed at its first "
              f"collection; each collection on more seeds is a new look that spends part of alpha (Pocock-type "
              f"spending up to {select.get('max_seeds')} seeds per arm), so the CIs of the decision are wider than "
              f"{level}. Every other scope, metric or rule is exploratory: "
              f"ablate collect <sweep_dir> metric=... slice=... shows it, never as a decisive winner."),
        ("h2", "Decision"),
    ]
    verdict = verdict_of(summary)
    if verdict == "decisive":
        blocks.append(("callout", f"Winner: {decision.get('factor') or 'arm'} = {summary['winner']} (decisive)",
                       True))
    elif verdict == "exploratory":
        blocks.append(("callout", f"Exploratory lead: {decision.get('factor') or 'arm'} = {decision.get('lead')} "
                                  f"({decision.get('exploratory')}; not a decisive claim)", False))
    elif verdict == "undetermined":
        blocks.append(("callout", "Undetermined: " + "; ".join(decision.get("reasons", [])), False))
    else:
        best = f" (best arm: {decision['best_arm']})" if decision.get("best_arm") else ": no arms could be compared"
        blocks.append(("callout", f"No decisive winner{best}", False))
    blocks.append(("p", summary["explanation"]))
    plan = decision.get("seeds_needed") or {}
    if plan.get("command"):
        blocks += [("p", f"To settle it, run {plan['seeds']} seeds per arm (finished cells are skipped):"),
                   ("code", plan["command"])]
    if plan.get("why"):
        blocks.append(("list", plan["why"]))
    if decision.get("recommended_arm") and decision["recommended_arm"] != decision.get("best_arm"):
        blocks.append(("p", f"Recommended arm after the tie-break: {decision['recommended_arm']}."))

    blocks += _race(summary)
    blocks += _looks(decision.get("look"), verdict)
    blocks += _objectives(summary)
    decisions = decisions_by_scope(summary)
    verdicts = [_scope_verdict(scope, d, scope == headline) for scope, d in decisions.items()]
    blocks += [("h2", "Decision per scope: all pairs and each held-out slice"), ("list", verdicts)]

    scopes = ["all", *slice_names(sweep)] + (["macro"] if headline == "macro" else [])
    headers = ["arm", "seeds done"]
    for scope in scopes:
        headers += [f"{scope_label(scope)}: mean ± std", f"{level} CI"]
    per_scope = {scope: arm_seed_stats(summary, sweep, metric, scope) for scope in scopes}
    rows = []
    for arm in summary["arms"]:
        row = [arm["arm"], f"{arm['done']}/{arm['cells']}"]
        for scope in scopes:
            stats = per_scope[scope][arm["arm"]]
            row += [mean_std(stats), ci(stats.get("ci_low"), stats.get("ci_high"))]
        rows.append(row)
    blocks += [("h2", f"Arms: held-out {metric} over seeds"),
               ("p", f"Mean ± sample std over the arm's finished seeds; {level} CI of the arm's mean over seeds and "
                     f"held-out pairs (none with one seed: the variance between training runs is unknown)."),
               ("table", headers, rows, [])]

    rows = [[scope_label(s), d.get("best_arm", "—"), c["arm"], f"{c['difference']:+.3f}",
             f"{ci(c['ci_low'], c['ci_high'])} ({confidence(d.get('alpha_used', select['alpha']))})",
             f"{c['seeds']} ({'paired' if c['paired'] else 'unpaired'})", fmt(c.get("extra_pairs"), 1),
             fmt(c.get("p_improvement"), 2), {True: "yes", False: "no", None: "—"}[c.get("equivalent")],
             "yes" if c["decisive"] else "no"]
            for s, d in decisions.items() for c in d.get("comparisons", [])]
    margin = select.get("equivalence_margin")
    blocks += [("h2", "Pairwise comparisons (best arm vs each other arm, same held-out pairs)"),
               ("p", f"Difference = best arm − other arm, mean over seeds and pairs. CI (at the decision's level: "
                     f"the look's for the primary test, {level} for exploratory scopes): seed by seed when "
                     f"both arms ran the same seeds (paired), else per arm (unpaired). Extra pairs = difference × "
                     f"held-out pairs in the scope. P(better) = share of (seed of best, seed of other) pairs in which "
                     f"the best arm scores higher: it describes the seeds that ran and is not a test (with 3 seeds "
                     f"per arm it moves in steps of 1/9, and two arms of ONE recipe show 1.00 with probability 1/20). "
                     f"Equivalent = two one-sided tests within "
                     f"±{fmt(margin) if margin else '—'}. Decisive = CI above 0 with {select['min_seeds']}+ seeds "
                     f"and the minimum gain met."),
               ("table", ["scope", "best arm", "vs arm", "difference", "CI (level)", "seeds", "extra pairs",
                          "P(better)", "equivalent", "decisive"], rows, [])]
    blocks += _generations(summary["diagnostics"].get("generation") or {}, sweep)
    blocks += _diagnostics(summary["diagnostics"], metric, level)
    blocks += _unfinished(sweep, summary)
    blocks.append(("h2", "Plots"))
    for name, path in plots.items():
        blocks.append(("img", PLOT_CAPTIONS.get(name, name).format(level=level), path))
    return blocks


def _scope_verdict(scope: str, d: dict, is_headline: bool) -> str:
    name = scope_label(scope) + (" (decision scope)" if is_headline else "")
    if not d.get("comparisons"):
        return f"{name}: not compared. {d.get('explanation', '')}"
    best = f"best arm {d['best_arm']} ({fmt(d['point'][d['best_arm']])})"
    if d["decisive"]:
        return f"{name}: {d.get('factor') or 'arm'} = {d['winner']} wins decisively; {best}."
    if d.get("verdict") == "exploratory":
        return (f"{name}: exploratory lead {d.get('factor') or 'arm'} = {d.get('lead')} (every rival's CI excludes 0, "
                f"but this is {d.get('exploratory')}); {best}.")
    if d.get("verdict") == "undetermined":
        return f"{name}: undetermined ({'; '.join(d.get('reasons', []))}); {best}."
    close = [c["arm"] for c in d["comparisons"] if not c["decisive"]]
    return f"{name}: no arm wins decisively; {best}, not decisively better than {', '.join(close)}."


def _race(summary: dict) -> list[tuple]:
    """A race's rounds (race.json): who ran how many seeds, who was dropped and why, the stop, cells spent."""
    race = summary.get("race")
    if not race:
        return []
    from ablate.collect.race import race_line

    rows = []
    for r in race.get("rounds", []):
        drops = "; ".join(f"{arm} (beaten by {why['by']}, {why['difference']:+.3f}, CI [{fmt(why['ci_low'])}, "
                          f"{fmt(why['ci_high'])}] at {why['level']:.3g})" for arm, why in r["drops"].items())
        rows.append([str(r["round"]), str(r["n"]), str(len(r["ran"])), str(len(r["new_cells"])), fmt(r["level"], 4),
                     fmt(r["spent"], 4), fmt(r.get("gpu_hours"), 3), drops or "—",
                     (r["stop"] or "continue") + (f": {r['winner']}" if r.get("winner") else "")])
    if race.get("tuning"):
        rule = (" Each round is a look within each objective's search space, on the validation pairs: a setting is "
                "dropped when Holm's step-down over its space's best setting's comparisons rejects it, and a space "
                "settles when one setting is left, its settings are equivalent, more seeds would be futile, or at "
                "the budget. The selection below takes no dropped setting; it claims nothing (the confirmation does).")
    else:
        rule = (" Each round is a look at the level alpha spending allows; an arm is dropped when Holm's step-down "
                "over the best arm's comparisons rejects it (the claim 'it is not the best' holds at that level), "
                "and the race stops at a winner, equivalence, futility or the budget. The collector's own comparison "
                "below is exploratory.")
    return [("h2", "Race: rounds of seeds"),
            ("p", race_line(race, summary["select"]["factor"]) + rule),
            ("table", ["round", "seeds per live arm", "arms run", "new cells", "level", "alpha spent",
                       "device-hours so far", "dropped", "then"], rows, [])]


GENERATION_COLUMNS = (("correct", "correct (rule, filler ignored)"), ("exact", "exact (no filler)"),
                      ("tokens_mean", "generated tokens"), ("eos_share", "ends with EOS"),
                      ("distinct_2", "distinct bigrams"), ("reward_mean", "reward"))


def _generations(generation: dict, sweep: Sweep) -> list[tuple]:
    """Ranking beside generation, per arm (eval.generate): what the arm's models write for the sampled prompts."""
    arms = generation.get("arms") or []
    if not arms:
        return []
    present = [(k, label) for k, label in GENERATION_COLUMNS if any(k in a["stats"] for a in arms)]
    reference = generation.get("reference") or {}
    rows = [["reference (adapter off)", "—", "—", *(fmt(reference.get(k)) for k, _ in present)]]
    for arm in arms:
        cells = []
        for key, _ in present:
            stats = arm["stats"].get(key)
            cells.append("—" if not stats else f"{fmt(stats['mean'])} {ci(stats.get('low'), stats.get('high'))}"
                         if stats.get("low") is not None else f"{fmt(stats['mean'])} (one seed)")
        rows.append([arm["arm"], str(arm["seeds"]), fmt(arm.get("ranking")), *cells])
    blocks = [("h2", "Ranking and generation: what each arm writes"),
              ("p", f"Held-out ranking ({generation.get('ranking_metric')}, all pairs) beside what the models generate "
                    f"for the same {generation.get('prompts') or 'sampled'} held-out prompts in every cell (greedy; "
                    f"sampled too with eval.samples): mean over seeds with a 95% t-interval over seeds, given those "
                    f"prompts. Descriptive: no test. A model can rank the preferred answer first and still not "
                    f"write it. Per-cell texts: cells/<id>/generations.parquet."),
              ("table", ["arm", "seeds", "ranking", *(label for _, label in present)], rows, [])]
    flags = [f"{a['arm']}: {flag}" for a in arms for flag in a["flags"]]
    if flags:
        blocks += [("p", "Ranking and generation disagree:"), ("list", flags)]
    example = _example_generations(sweep, arms)
    if example:
        blocks += [("p", "One prompt, the first seed of each arm (greedy):"),
                   ("table", ["arm", "prompt", "generated"], example, [])]
    return blocks


def _example_generations(sweep: Sweep, arms: list[dict]) -> list[list[str]]:
    import pandas as pd

    rows, done = [], sweep.done
    for arm in arms:
        cells = done[done.arm == arm["arm"]].sort_values("seed")
        path = sweep.cell_dir(cells.cell_id.iloc[0]) / "generations.parquet" if len(cells) else None
        if path is None or not path.exists():
            continue
        first = pd.read_parquet(path, columns=["prompt", "text", "sample"]).query("sample == 0").iloc[0]
        rows.append([arm["arm"], str(first.prompt), str(first.text)[:200]])
    return rows


def _objectives(summary: dict) -> list[tuple]:
    """What each arm's cells ran (objective.json): objective, settings, formula and source fingerprint."""
    ran = summary.get("objectives") or {}
    if not ran:
        return []
    rows = []
    for arm, r in ran.items():
        if "objective" not in r:
            rows.append([arm, "—", "—", "not recorded (cells trained before ablate wrote objective.json)", "—"])
            continue
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "terms")
        if r.get("terms"):
            settings = " + ".join(f"{t['weight']:g} × {t['name']}"
                                  + (f" ({', '.join(f'{k}={v}' for k, v in t['settings'].items())})"
                                     if t["settings"] else "") for t in r["terms"])
        formula = r["formula"].replace("\n", "; ")
        if r.get("terms"):
            formula += "; " + "; ".join(f"{t['name']}: {t['formula'].replace(chr(10), '; ')}" for t in r["terms"])
        fingerprint = ", ".join(r["fingerprints"]) + (f" ({r['unrecorded']} cell(s) unrecorded)"
                                                      if r.get("unrecorded") else "")
        rows.append([arm, r["objective"], settings or "—", formula, fingerprint])
    return [("h2", "What ran: the objective of each arm"),
            ("p", "From each finished cell's objective.json, written when it started training: the loss's formula as "
                  "its docstring states it and a fingerprint of its source code (two fingerprints in one arm mean the "
                  "loss changed during the sweep)."),
            ("table", ["arm", "objective", "settings", "formula", "source fingerprint"], rows, [])]


def _looks(look: dict | None, verdict: str) -> list[tuple]:
    """The primary test's looks so far, from the decision ledger (decisions.jsonl)."""
    if not look:
        return []
    rows = [[str(h["look"]), str(h["n"]), fmt(h["nominal_alpha"], 4), fmt(h["alpha_spent"], 4), h["verdict"],
             h.get("winner") or "—", h.get("collected_at") or "—"] for h in look.get("history", [])]
    if look.get("new_look") and not look.get("exploratory") and verdict != "undetermined":
        rows.append([f"{look['look']} (this one)", str(look["n"]), fmt(look["nominal_alpha"], 4),
                     fmt(look["alpha_spent"], 4), "—", "—", "now"])
    if not rows:
        return []
    return [("h2", "Looks of the primary test (decision ledger)"),
            ("p", f"Each collection of the primary test on more seeds is a look; a look tests at the level its share "
                  f"of alpha allows, so the error over all looks stays at most {fmt(look['alpha'])} (re-collecting the "
                  f"same seeds is the same look; an undetermined collection spends nothing)."),
            ("table", ["look", "seeds per arm", "tested at", "alpha spent", "verdict", "winner", "collected"], rows,
             [])]


def _diagnostics(diag: dict, metric: str, level: str) -> list[tuple]:
    over = diag.get("overoptimisation", [])
    flagged = [i for i, r in enumerate(over) if r["flagged"]]
    blocks = [("h2", "Diagnostics"), ("h3", "Overoptimisation"),
              ("p", f"A cell is flagged when its training rewards/margins rise from the first to the second half of "
                    f"training while held-out {metric} does not improve between mid-training and the end. "
                    + (f"{len(flagged)} of {len(over)} cells flagged." if over else
                       "No cell has enough training and evaluation log entries to check."))]
    if over:
        rows = [[r["cell_id"], r["arm"], fmt(r["seed"]),
                 f"{fmt(r['train_margin_first_half'])} → {fmt(r['train_margin_second_half'])}",
                 f"{fmt(r['heldout_mid'])} (step {r['heldout_mid_step']}) → {fmt(r['heldout_final'])}",
                 fmt(r.get("heldout_margin_gain"), 2), "FLAGGED" if r["flagged"] else "no"] for r in over]
        blocks.append(("table", ["cell", "arm", "seed", "training margin, 1st → 2nd half", f"held-out {metric}, "
                                 "mid → final", "held-out log-ratio margin gain (nats)", "flag"], rows, flagged))

    outcomes = diag.get("seed_outcomes", [])
    blocks += [("h3", "What the seeds can exclude"),
               ("p", f"A run went wrong when its cell failed or its {metric} collapsed below its arm's median by "
                     "more than select.collapse_gap. A few good seeds cannot show a recipe is safe: the bound is the "
                     "largest rate of such runs the seeds do not exclude. " + (exclusion_line(outcomes, level) or ""))]
    if outcomes:
        rows = [[r["arm"], str(r["seeds"]), ", ".join(map(str, r["failed_seeds"])) or "—",
                 ", ".join(map(str, r["collapsed_seeds"])) or "—", f"{r['rate_upper']:.0%}"] for r in outcomes]
        blocks.append(("table", ["arm", "seeds", "failed", "collapsed", f"rate not excluded ({level} bound)"], rows,
                       [i for i, r in enumerate(outcomes) if r["gone_wrong"]]))

    shift = pd.DataFrame(diag.get("chosen_logp_shift", []))
    blocks += [("h3", "Chosen log-prob shift"),
               ("p", "Mean per-token change of the chosen answers' log-prob vs the base model (nats/token). "
                     "Negative = the policy makes even the preferred answers less likely (a known failure of "
                     "margin objectives).")]
    if shift.empty:
        blocks.append(("p", "Not available: no finished cell reports heldout/chosen_logp_shift."))
    else:
        rows = [[arm, fmt(g.chosen_logp_shift.mean()), f"[{fmt(g.chosen_logp_shift.min())}, "
                 f"{fmt(g.chosen_logp_shift.max())}]", f"{int(g.falling.sum())}/{len(g)}"]
                for arm, g in shift.groupby("arm", sort=False)]
        blocks.append(("table", ["arm", "mean shift", "min, max over cells", "cells where it falls"], rows, []))

    blocks.append(("h3", "Length artifacts in the training data"))
    if diag.get("length"):
        rows = [[fmt(f.get("data")), fmt(f.get("pairs")), fmt(f.get("chosen_tokens_mean"), 1),
                 fmt(f.get("rejected_tokens_mean"), 1), fmt(f.get("chosen_longer_share"), 2),
                 fmt(f.get("chosen_shorter_share"), 2), f["verdict"]] for f in diag["length"]]
        blocks.append(("table", ["data", "pairs", "chosen tokens (mean)", "rejected tokens (mean)", "chosen longer",
                                 "chosen shorter", "verdict"], rows, []))
    else:
        blocks.append(("p", "Not checked: the sweep has no training-data length statistics (shared/data-*.json)."))

    blocks.append(("h3", "Data checks"))
    if diag.get("data_checks"):
        rows = [[fmt(f.get("data")), fmt(f.get("file")), f["finding"],
                 f"{f['count']}" + (f" of {f['of']}" if f.get("of") is not None else ""), fmt(f.get("example"))]
                for f in diag["data_checks"]]
        blocks.append(("table", ["data", "file", "finding", "rows or pairs", "example"], rows, []))
    else:
        blocks.append(("p", "Nothing found: no row skipped or rewritten, no duplicate training pair, no held-out "
                            "prompt among the training prompts (shared/data-*.json)."))

    fact = diag.get("factorial", {})
    blocks.append(("h3", "Factorial effects (exploratory)"))
    if not fact.get("main_effects"):
        blocks.append(("p", f"Not estimated: {fact.get('note', 'no effects computed')} "
                            f"(swept factors: {', '.join(fact.get('factors', [])) or 'none'})."))
        return blocks
    note = f" Note: {fact['note']}." if fact.get("note") else ""
    blocks.append(("p", f"Exploratory: contrasts of arm means of held-out {metric} (averaged over the other "
                        f"factors), {level} CIs over seeds and held-out pairs, each unadjusted for the others and for "
                        f"looks. A CI that excludes 0 here suggests where to look next; it is not a decisive "
                        f"claim.{note}"))

    def excludes(effect: dict) -> str:
        return "—" if missing(effect["ci_low"]) else "yes" if effect["excludes_zero"] else "no"

    rows = [[m["factor"], f"{m['level']} vs {m['versus']}", f"{m['effect']:+.3f}", ci(m["ci_low"], m["ci_high"]),
             excludes(m)] for m in fact["main_effects"]]
    blocks.append(("table", ["main effect of", "levels", "effect", f"{level} CI", "CI excludes 0"], rows, []))
    rows = [[" × ".join(i["factors"]), i["definition"], f"{i['effect']:+.3f}", ci(i["ci_low"], i["ci_high"]),
             excludes(i)] for i in fact.get("interactions", [])]
    if rows:
        blocks.append(("table", ["interaction", "definition", "effect", f"{level} CI", "CI excludes 0"], rows, []))
    return blocks


def _unfinished(sweep: Sweep, summary: dict) -> list[tuple]:
    # From the cells table itself: it has every cell, whatever files it lacks.
    cells = sweep.cells[sweep.cells.state != "done"]
    blocks = [("h2", f"Cells not finished ({len(cells)})")]
    if cells.empty:
        blocks.append(("p", "Every cell is done."))
    else:
        rows = [[c["cell_id"], c.get("arm", ""), c["state"], one_line(c.get("overrides")), one_line(c.get("error"))
                 or "—"] for c in cells.to_dict("records")]
        blocks.append(("table", ["cell", "arm", "state", "overrides", "error"], rows,
                       [i for i, r in enumerate(rows) if r[2] in ("failed", "corrupt")]))
    seen, problems = set(), []
    for p in [*summary.get("problems", []), *sweep.problems]:  # files read again while plotting may add some
        key = (p.get("cell_id"), p.get("file"), p.get("problem"))
        if key not in seen:
            seen.add(key)
            problems.append([fmt(p.get("cell_id")), fmt(p.get("file")), one_line(p.get("problem"))])
    blocks.append(("h2", f"Problems: unreadable or inconsistent files ({len(problems)})"))
    blocks.append(("table", ["cell", "file", "problem"], problems, []))
    return blocks


# ---------------------------------------------------------------- rendering

def _md_escape(text) -> str:
    """Backslash what Markdown would act on; an underscore only where it could open/close emphasis."""
    return re.sub(r"([\\`*<>|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))", r"\\\1", str(text))


def to_markdown(blocks: list[tuple], report_dir: Path) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + _md_escape(args[0]))
        elif kind == "p":
            out.append(_md_escape(args[0]))
        elif kind == "callout":
            out.append(f"> **{_md_escape(args[0])}**")
        elif kind == "code":
            out.append(f"```\n{args[0]}\n```")
        elif kind == "list":
            out.append("\n".join(f"- {_md_escape(item)}" for item in args[0]))
        elif kind == "table" and not args[1]:
            out.append("None.")
        elif kind == "table":
            headers, rows, _ = args
            lines = ["| " + " | ".join(map(_md_escape, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            caption, path = args
            out.append(f"**{_md_escape(caption)}**\n\n![{_md_escape(caption)}]({path.relative_to(report_dir)})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(args[0])}</p>")
        elif kind == "callout":
            out.append(f'<div class="callout {"yes" if args[1] else "no"}">{e(args[0])}</div>')
        elif kind == "code":
            out.append(f"<pre><code>{e(args[0])}</code></pre>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in args[0]) + "</ul>")
        elif kind == "table" and not args[1]:
            out.append("<p>None.</p>")
        elif kind == "table":
            headers, rows, flagged = args
            body = "".join(("<tr class='flag'>" if i in flagged else "<tr>")
                           + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + f"</tr>{body}</table>")
        elif kind == "img":
            caption, path = args
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f'<figure><figcaption>{e(caption)}</figcaption>'
                       f'<img alt="{e(caption)}" src="data:image/png;base64,{data}"></figure>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_report(sweep: Sweep, summary: dict, report_dir: Path) -> None:
    """report/plots/*.png, report/report.md and report/report.html (self-contained)."""
    report_dir = Path(report_dir)
    plots = all_plots(sweep, summary, report_dir / "plots")
    blocks = build_blocks(sweep, summary, plots)
    if summary.get("tuning"):  # a tuned sweep: its answer comes first (README "Tuned comparisons")
        from ablate.collect.tuning_report import sensitivity_plot, tuning_blocks

        drawn = sensitivity_plot(summary, report_dir / "plots")
        at = next((i for i, b in enumerate(blocks) if b[:2] == ("h2", "Decision")), len(blocks))
        blocks[at:at] = tuning_blocks(summary, {"sensitivity": drawn} if drawn else {})
    atomic_write_text(report_dir / "report.md", to_markdown(blocks, report_dir))
    atomic_write_text(report_dir / "report.html", to_html(blocks, blocks[0][1]))
