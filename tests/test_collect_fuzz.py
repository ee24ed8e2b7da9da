"""The collector on sweep directories in any state: it never crashes, and report/ is replaced whole or not at all.

Fuzzing: a finished golden sweep (tests/sweep_fixtures.py) is copied and damaged at random - files truncated,
overwritten with garbage or non-UTF-8 bytes, replaced by valid JSON of the wrong type or by a directory,
deleted, fields given the wrong type - then collected with plots. Seeded, so a failure replays exactly.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
from sweep_fixtures import GOLDEN_COUNTS, data_stats, golden_sweep, grid_cells, write_sweep

from ablate.collect import collect
from ablate.collect import collector as collector_module
from ablate.config import select_config

TRIALS = 60
PLOT_EVERY = 10  # drawing the figures costs ~1 s; every 10th trial draws them


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return golden_sweep(tmp_path_factory.mktemp("template"))


def damage(path, rng: random.Random) -> str:
    """One random kind of damage to one file; returns what was done (for the failure message)."""
    data = path.read_bytes()
    kind = rng.choice(["truncate", "garbage", "non-utf8", "wrong-type", "directory", "delete", "field-types",
                       "nan", "empty"])
    if kind == "truncate":
        path.write_bytes(data[: rng.randrange(max(1, len(data)))])
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    elif kind == "non-utf8":
        cut = rng.randrange(max(1, len(data)))
        path.write_bytes(data[:cut] + b"\xff\xfe\xc3\x28" + data[cut:])
    elif kind == "wrong-type":
        path.write_text(json.dumps(rng.choice([[1, 2], 3, "text", None, True, {"step": "x"}])))
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "delete":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("field-types", "nan") and path.suffix == ".json":
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj:
            key = rng.choice(sorted(obj))
            obj[key] = float("nan") if kind == "nan" else rng.choice([[1], {"a": 1}, "abc", None, -7, True])
            path.write_text(json.dumps(obj))  # json writes NaN, as a sloppy writer would
    elif kind in ("field-types", "nan") and path.suffix == ".jsonl":
        lines = data.decode(errors="replace").splitlines()
        if lines:
            i = rng.randrange(len(lines))
            lines[i] = json.dumps({"step": rng.choice(["10", None, [1]]), "rewards/margins": "high"})
            path.write_text("\n".join(lines) + "\n")
    return f"{kind} {path.name}"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_collector_survives_a_damaged_sweep(template, tmp_path, trial):
    rng = random.Random(trial)
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(template, sweep_dir)
    files = sorted(p for p in sweep_dir.rglob("*") if p.is_file() and "report" not in p.parts)
    done = [damage(path, rng) for path in rng.sample(files, rng.randint(1, 4))]
    if rng.random() < 0.1:  # sometimes a stray folder, or no status anywhere (a dry run, a sweep just started)
        (sweep_dir / "cells" / "not-a-cell").mkdir()
        done.append("stray folder")
    if rng.random() < 0.1:
        for status in sweep_dir.glob("cells/*/status.json"):
            status.unlink()
        done.append("no status.json")

    summary = collect(sweep_dir, select_config(), plots=trial % PLOT_EVERY == 0)

    written = json.loads((sweep_dir / "report" / "summary.json").read_text())  # strict JSON: no NaN
    assert written["verdict"] == summary["verdict"] in ("decisive", "not decisive", "undetermined"), done
    internal = [p for p in summary["problems"] if "internal error" in p["problem"]]
    assert not internal, (done, internal)
    if summary["verdict"] == "decisive":  # only when every finished cell of every arm was readable
        assert not summary["decision"]["reasons"], done
    assert not list(sweep_dir.glob(".report-*")), "staging folder left behind"


def test_no_status_json_at_all_is_a_sweep_not_started(tmp_path):
    # right after a sweep starts, or after a SLURM dry run: sweep.json lists cells, none has a status.json
    sweep_dir = write_sweep(tmp_path, grid_cells(GOLDEN_COUNTS))
    for status in sweep_dir.glob("cells/*/status.json"):
        status.unlink()
    summary = collect(sweep_dir, select_config(), plots=True)
    assert summary["verdict"] == "undetermined" and summary["winner"] is None
    assert set(summary["cell_counts"]) == {"unknown"}


def test_stray_folder_is_reported_not_an_arm(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    (sweep_dir / "cells" / "copied-by-hand").mkdir()
    summary = collect(sweep_dir, select_config(), plots=False)
    assert len(summary["arms"]) == 4 and summary["verdict"] == "decisive"
    assert any("copied-by-hand" in p["file"] and "not a cell" in p["problem"] for p in summary["problems"])


def test_nan_in_metrics_json_marks_the_cell_corrupt(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    metrics = next(sweep_dir.glob("cells/*/metrics.json"))
    values = json.loads(metrics.read_text())
    values["heldout/avglogp_accuracy"] = float("nan")
    metrics.write_text(json.dumps(values))
    summary = collect(sweep_dir, select_config(), plots=False)
    assert summary["cell_counts"]["corrupt"] == 1 and summary["verdict"] == "undetermined"
    assert any("non-finite" in p["problem"] for p in summary["problems"])


def test_report_is_replaced_whole(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    collect(sweep_dir, select_config(), plots=True)
    (sweep_dir / "report" / "left-over.png").write_bytes(b"old")
    summary = collect(sweep_dir, select_config(["slice=clean"]), plots=True)
    assert not (sweep_dir / "report" / "left-over.png").exists()  # nothing of the old report survives
    assert json.loads((sweep_dir / "report" / "summary.json").read_text())["select"]["slice"] == "clean"
    assert summary["decision"]["scope"] == "clean"


def test_a_failed_collection_leaves_the_old_report_untouched(tmp_path, monkeypatch):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    collect(sweep_dir, select_config(), plots=False)
    before = {p.name: p.read_bytes() for p in (sweep_dir / "report").iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(collector_module, "atomic_write_json", fail)  # summary.json is written last
    with pytest.raises(OSError, match="disk full"):
        collect(sweep_dir, select_config(["slice=clean"]), plots=False)
    assert {p.name: p.read_bytes() for p in (sweep_dir / "report").iterdir()} == before
    assert not list(sweep_dir.glob(".report-*"))


def test_a_rule_that_cannot_apply_writes_nothing(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match="select.slice = 'nonexistent'"):
        collect(sweep_dir, select_config(["slice=nonexistent"]), plots=False)
    assert not (sweep_dir / "report").exists()


def test_labels_follow_the_configured_alpha(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep", data=[data_stats()])
    summary = collect(sweep_dir, select_config(["alpha=0.1", "max_seeds=3"]), plots=True)  # all alpha at this look
    text = (sweep_dir / "report" / "report.md").read_text()
    assert "90% CI" in text and "95%" not in text
    assert "90% CI" in summary["explanation"]
