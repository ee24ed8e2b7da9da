"""The collector's report on a synthetic sweep directory (no training): files, content, plots, notebook.

`make_sweep` writes what finished cells leave behind (docs/ARCHITECTURE.md §3) with numbers chosen by hand: DPO
gets most held-out pairs right, SimPO fewer, so the decision is known in advance. Held-out metrics
are computed from the written per-pair table with ablate.data.heldout, as a real cell does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate.collect import collect, select_config
from ablate.data.heldout import PAIR_COLUMNS, heldout_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("decision", "curves", "heatmap", "slices")
SKILL = {"dpo": 1.0, "simpo": 0.3}  # how far each objective moves the chosen answer above the rejected one
FAILURE = "RuntimeError: CUDA out of memory | tried to allocate <2 GiB>"


def _pairs(rng: np.random.Generator, n_per_slice: int, skill: float, progress: float) -> pd.DataFrame:
    """Held-out pairs after `progress` (0..1) of training; at 0 the policy is the reference model."""
    n = 2 * n_per_slice
    chosen_tokens = rng.integers(4, 8, n)
    rejected_tokens = chosen_tokens + np.r_[np.zeros(n_per_slice, int), rng.integers(2, 5, n_per_slice)]
    ref_chosen = -chosen_tokens * rng.uniform(1.0, 1.5, n)
    ref_rejected = -rejected_tokens * rng.uniform(1.0, 1.5, n)
    push = progress * (skill + rng.normal(0, 0.6, n))  # nats per token, noisy so not every pair is right
    return pd.DataFrame({
        "pair_id": [f"p{i}" for i in range(n)],
        "slice": ["clean"] * n_per_slice + ["verbose_rejected"] * n_per_slice,
        "chosen_logp": ref_chosen + push * chosen_tokens - 0.2 * progress * chosen_tokens,
        "rejected_logp": ref_rejected - push * rejected_tokens,
        "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens,
        "ref_chosen_logp": ref_chosen, "ref_rejected_logp": ref_rejected,
    })[PAIR_COLUMNS]  # fmt: skip


def make_sweep(tmp_path: Path, objectives=("dpo", "simpo"), ranks=(8, 16), seeds=(0, 1, 2), failed: dict | None = None,
               skill: dict | None = None, n_per_slice: int = 30, steps: int = 60) -> Path:
    """A sweep directory as the launcher and finished cells leave it.

    failed: {(objective, r, seed): error} for cells that failed (a seed outside `seeds` adds a cell);
    default: one failed extra seed of simpo r=16. skill: per objective, default SKILL.
    """
    failed = {("simpo", 16, 3): FAILURE} if failed is None else failed
    sweep_dir = tmp_path / "sweep"
    grid = [(o, r, s) for o in objectives for r in ranks for s in seeds] + [k for k in failed if k[2] not in seeds]
    cells = []
    for index, (objective, rank, seed) in enumerate(grid):
        cell_id = f"cell{index:03d}"
        overrides = [f"objective={objective}", f"lora.r={rank}", f"seed={seed}"]
        cells.append({"cell_id": cell_id, "overrides": overrides})
        cell_dir = sweep_dir / "cells" / cell_id
        cell_dir.mkdir(parents=True)
        error = failed.get((objective, rank, seed))
        status = {"state": "failed" if error else "done", "error": error, "attempts": 1, "overrides": overrides,
                  "objective": objective, "lora_r": rank, "seed": seed, "max_steps": steps, "elapsed_s": 1.5}
        (cell_dir / "status.json").write_text(json.dumps(status))
        if error:
            continue
        cell_skill = (skill or SKILL)[objective] + 0.05 * (rank == 16)
        train_log = [{"step": step, "loss": 0.69 - step / 200,
                      "rewards/margins": cell_skill * step / steps * (1 + seed / 10)}
                     for step in range(10, steps + 1, 10)]
        (cell_dir / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in train_log))
        eval_log = []
        for step in (0, steps // 2, steps):
            pairs = _pairs(np.random.default_rng(100 * index + seed), n_per_slice, cell_skill, step / steps)
            eval_log.append({"step": step, **heldout_metrics(pairs)})
        (cell_dir / "eval_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eval_log))
        pairs.to_parquet(cell_dir / "heldout_pairs.parquet")
        (cell_dir / "metrics.json").write_text(json.dumps({"step": steps, **heldout_metrics(pairs)}))
    axes = {"objective": list(objectives), "lora.r": [str(r) for r in ranks], "seed": [str(s) for s in seeds]}
    (sweep_dir / "sweep.json").write_text(json.dumps({"axes": axes, "cells": cells}))
    (sweep_dir / "shared").mkdir()
    (sweep_dir / "shared" / "data-0123.json").write_text(json.dumps({"data": {"kind": "embedded"}, "train": {
        "pairs": 64, "chosen_tokens_mean": 9.0, "rejected_tokens_mean": 6.5,
        "chosen_longer_share": 0.5, "chosen_shorter_share": 0.0}}))  # fmt: skip
    return sweep_dir


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple[Path, dict]:
    # six seeds, the fourth of simpo r=16 failed: counted as the worst outcome (failed_cells=worst; the default rule
    # would say undetermined), the comparison uses all six seeds and DPO still wins decisively
    sweep_dir = make_sweep(tmp_path_factory.mktemp("report"), seeds=tuple(range(6)), failed={("simpo", 16, 3): FAILURE})
    with open(sweep_dir / "cells" / "cell000" / "train_log.jsonl", "a") as f:
        f.write('{"step": 70, "rewards/mar')  # a torn last line, as a killed writer leaves it
    return sweep_dir, collect(sweep_dir, select_config(["failed_cells=worst"]))


def test_collect_writes_every_report_file(collected):
    sweep_dir, summary = collected
    report = sweep_dir / "report"
    for name in ("summary.json", "cells.csv", "report.md", "report.html"):
        assert (report / name).stat().st_size > 0, name
    assert json.loads((report / "summary.json").read_text())["winner"] == summary["winner"] == "dpo"
    assert len(pd.read_csv(report / "cells.csv")) == 24
    for name in PLOTS:
        data = (report / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    assert not list(report.rglob(".*")), "temporary files of the atomic writes were left behind"


def test_html_is_self_contained(collected):
    sweep_dir, _ = collected
    page = (sweep_dir / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert 'src="plots/' not in page and "<link" not in page and "<script" not in page
    assert "&lt;2 GiB&gt;" in page and "<2 GiB>" not in page  # the error text is escaped, not markup


def test_report_states_decision_and_hides_nothing(collected):
    sweep_dir, summary = collected
    for name in ("report.md", "report.html"):
        text = (sweep_dir / "report" / name).read_text()
        # simpo r=16's fourth seed failed: scored as the worst outcome (failed_cells=worst), and the failure is listed
        assert "Winner: objective = dpo (decisive)" in text
        assert "counted as the worst outcome" in text
        assert "verbose_rejected pairs" in text and "clean pairs" in text  # the per-slice decisions
        assert "objective=simpo lora.r=16" in text and "1 failed" in text
        assert "CUDA out of memory" in text  # a failed cell's error is shown, not just counted
        assert "corrupt line skipped" in text  # the torn log line is listed as a problem
        assert "Overoptimisation" in text and "Chosen log-prob shift" in text
        assert "verbosity: chosen is longer than rejected in 50%" in text  # half padded, none shortened
        assert "main effect of" in text and "95% CI" in text and "P(better)" in text
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "(plots/decision.png)" in md and "\\| tried to allocate \\<2 GiB\\>" in md
    assert summary["not_finished"][0]["error"] == FAILURE


def test_a_failed_seed_makes_the_default_rule_undetermined_naming_the_cell(tmp_path):
    """Without a policy for it, a failed seed neither vanishes nor counts: the verdict waits for its rerun."""
    sweep_dir = make_sweep(tmp_path)
    summary = collect(sweep_dir, plots=False)
    d = summary["decision"]
    assert summary["verdict"] == d["verdict"] == "undetermined" and summary["winner"] is None
    (cell,) = d["not_finished_cells"]
    assert cell["arm"] == "objective=simpo lora.r=16" and cell["seed"] == 3 and cell["state"] == "failed"
    assert "CUDA out of memory" in cell["what"] and "rerun: " in summary["explanation"]
    assert d["rerun_command"].startswith("python -m ablate -m ") and "seed=0,1,2,3" in d["rerun_command"]
    assert all(s["verdict"] == "undetermined" for s in summary["slices"].values())


def test_worst_outcome_lowers_the_arm_with_the_failed_seed(tmp_path):
    sweep_dir = make_sweep(tmp_path)
    plain = collect(sweep_dir, plots=False)
    worst = collect(sweep_dir, select_config(["failed_cells=worst"]), plots=False)
    arm = "objective=simpo lora.r=16"
    assert worst["decision"]["point"][arm] < plain["decision"]["point"][arm]  # 4 seeds, one of them all wrong
    assert worst["decision"]["point"][arm] == pytest.approx(plain["decision"]["point"][arm] * 3 / 4)


def test_no_decisive_winner_and_factorial_effects(tmp_path):
    """Identical objectives: the report must say plainly that nothing wins; a full grid gets main effects."""
    sweep_dir = make_sweep(tmp_path, failed={}, skill={"dpo": 1.0, "simpo": 1.0})
    collect(sweep_dir)
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "No decisive winner" in md and "Winner:" not in md
    assert "main effect of" in md and "interaction" in md
    assert "Every cell is done." in md and "Problems: unreadable or inconsistent files (0)" in md


def test_plots_are_skipped_without_the_axes(tmp_path):
    """One objective and one rank: no heatmap, no crash; the decision plot still shows the single arm."""
    sweep_dir = make_sweep(tmp_path, objectives=("dpo",), ranks=(8,), failed={})
    collect(sweep_dir)
    plots = {p.stem for p in (sweep_dir / "report" / "plots").glob("*.png")}
    assert "heatmap" not in plots and {"decision", "slices", "curves"} <= plots
    assert "Plots" in (sweep_dir / "report" / "report.md").read_text()


def test_report_when_no_cell_finished(tmp_path):
    """Every cell failed: still a report, which says there is no decision and lists every error."""
    failed = {(o, r, 0): f"ValueError: {o} r={r} diverged" for o in ("dpo", "simpo") for r in (8, 16)}
    sweep_dir = make_sweep(tmp_path, seeds=(0,), failed=failed)
    collect(sweep_dir)
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "Undetermined: no finished seed in" in md and "nothing to compare" in md
    assert all(error in md for error in failed.values())
    assert not list((sweep_dir / "report" / "plots").glob("*.png"))


def test_review_notebook_runs(collected, monkeypatch):
    import nbclient  # dev dependencies: a missing one must fail, not skip
    import nbformat
    sweep_dir, _ = collected
    monkeypatch.setenv("ABLATE_SWEEP_DIR", str(sweep_dir))  # the kernel inherits os.environ
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "review_sweep.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit it with outputs cleared"
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(PLOTS)


def test_report_says_what_ran_per_arm_and_flags_a_loss_changed_mid_sweep(tmp_path):
    """objective.json (written by each cell as it starts) is what the report shows per arm; two source fingerprints
    in one arm are a problem, and cells trained before the record existed are counted as unrecorded."""
    from ablate.train.objectives import provenance

    sweep_dir = make_sweep(tmp_path, ranks=(8,), failed={})
    cells = sorted((sweep_dir / "cells").iterdir())
    records = {"dpo": provenance({"name": "dpo", "beta": 0.1, "label_smoothing": 0.0}),
               "simpo": provenance({"name": "simpo", "beta": 2.0, "gamma": 0.5, "nll_weight": 0.0})}
    for cell in cells:
        objective = json.loads((cell / "status.json").read_text())["objective"]
        (cell / "objective.json").write_text(json.dumps(records[objective]))
    changed = records["dpo"] | {"source_sha256": "0123456789abcdef"}  # seed 2 of dpo ran other loss code
    (cells[2] / "objective.json").write_text(json.dumps(changed))
    (cells[5] / "objective.json").unlink()  # seed 2 of simpo: trained before objective.json existed
    summary = collect(sweep_dir, select_config([]))
    dpo, simpo = summary["objectives"]["objective=dpo"], summary["objectives"]["objective=simpo"]
    assert dpo["fingerprints"] == sorted([records["dpo"]["source_sha256"], "0123456789abcdef"])
    assert simpo["fingerprints"] == [records["simpo"]["source_sha256"]] and simpo["unrecorded"] == 1
    assert any("ran 2 versions of the loss code" in p["problem"] for p in summary["problems"])
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "## What ran: the objective of each arm" in report
    assert "L = −log σ(β·S_w/n_w − β·S_l/n_l − γ) + nll_weight·(−S_w/n_w)" in report
    assert "(1 cell(s) unrecorded)" in report
