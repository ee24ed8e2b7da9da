"""Bad-row policy, duplicate pairs and held-out leakage (ablate/data/checks.py), through planning."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ablate.collect.diagnostics import data_checks
from ablate.data.readers import DataError
from ablate.sweepdir.ids import as_plain
from ablate.train.shared import prepare_sweep_data

ROWS = [{"prompt": f"echo {c}", "chosen": f"rev : {c}", "rejected": f"copy : {c} a"} for c in "abcdefgh"]
HELDOUT = [{"prompt": "echo p o", "chosen": "copy : p o", "rejected": "rev : o p"}]


def write_jsonl(path: Path, rows: list, extra_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for index, line in (extra_lines or {}).items():
        lines.insert(index, line)
    path.write_text("\n".join(lines) + "\n")
    return path


def plan(compose_cfg, tmp_path, train: Path, heldout: Path, *options: str) -> dict:
    cfg = compose_cfg(["data=files", f"data.train_files=[{train}]", f"data.heldout_files=[{heldout}]", *options])
    prepare_sweep_data([as_plain(cfg)], tmp_path / "shared")
    return json.loads(next((tmp_path / "shared").glob("data-*.json")).read_text())


def test_skip_drops_bad_rows_and_records_them_per_file_and_reason(compose_cfg, tmp_path):
    rows = [*ROWS[:3], {**ROWS[3], "chosen": None}, *ROWS[4:]]
    train = write_jsonl(tmp_path / "train.jsonl", rows, {2: '{"prompt": "echo x",'})  # line 3: malformed
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    record = plan(compose_cfg, tmp_path, train, heldout, "data.on_bad_row=skip", "data.max_bad_fraction=0.25")
    assert record["train"]["pairs"] == 7
    checks = record["checks"]
    assert checks["rows_read"] == {str(train): 9, str(heldout): 1}
    assert checks["rows_skipped"] == {str(train): {"malformed JSON": 1, "null": 1}}
    assert checks["skipped_examples"]["malformed JSON"].startswith(f"{train} line 3: malformed JSON")
    assert checks["skipped_examples"]["null"] == f"{train} line 5: column 'chosen' is null"
    findings = data_checks(SimpleNamespace(data_stats=[record]))  # what the report's "Data checks" table shows
    assert {(f["finding"], f["count"], f["of"]) for f in findings} == {
        ("skipped: malformed JSON", 1, 9), ("skipped: null", 1, 9)}


def test_skip_refuses_more_bad_rows_than_max_bad_fraction(compose_cfg, tmp_path):
    rows = [{**r, "rejected": ""} if i < 3 else r for i, r in enumerate(ROWS)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    with pytest.raises(DataError) as error:
        plan(compose_cfg, tmp_path, train, heldout, "data.on_bad_row=skip", "data.max_bad_fraction=0.2")
    message = str(error.value)
    assert "3 of 9 rows are bad (33.3% > data.max_bad_fraction = 0.2)" in message
    assert f"{train}: 3 empty" in message and f"e.g. {train} line 1: column 'rejected' is empty" in message
    assert not list((tmp_path / "shared").glob("*"))


def test_a_held_out_prompt_seen_in_training_stops_the_sweep_unless_allowed(compose_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [*HELDOUT, {**ROWS[2], "chosen": "rev : c c"}])
    with pytest.raises(DataError) as error:
        plan(compose_cfg, tmp_path, train, heldout)
    assert ("1 of 2 held-out pairs have a prompt that is also a training prompt (e.g. heldout-1 ('echo c'))"
            in str(error.value))
    record = plan(compose_cfg, tmp_path, train, heldout, "data.max_overlap=0.5")
    overlap = record["checks"]["heldout_prompts_in_train"]
    assert overlap == {"count": 1, "of": 2, "examples": [{"pair_id": "heldout-1", "prompt": "echo c"}]}


def test_identical_train_and_heldout_files_are_all_overlap(compose_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(DataError, match="8 of 8 held-out pairs have a prompt that is also a training prompt"):
        plan(compose_cfg, tmp_path, train, train)


def test_duplicate_training_pairs_are_counted(compose_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [*ROWS, ROWS[0], ROWS[0], ROWS[5]])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    record = plan(compose_cfg, tmp_path, train, heldout)
    assert record["checks"]["duplicate_train_pairs"] == {"count": 3, "examples": ["train-8", "train-9", "train-10"]}
    [finding] = data_checks(SimpleNamespace(data_stats=[record]))
    assert finding["finding"] == "duplicate training pairs" and finding["count"] == 3


def test_validating_100k_pairs_at_planning_takes_under_10_s(tmp_path):
    """The issue's bar, on the read + validate + checks part of planning (tokenising is measured apart, README).
    CPU time of this process: single-threaded Python, so other jobs on a shared machine do not count."""
    import time

    from ablate.data.checks import check_pairs
    from ablate.data.pairs import RowTally, read_pairs_from_files

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i} about a topic", "chosen": f"a good answer {i}",
                                        "rejected": f"a worse answer {i}"}) + "\n" for i in range(100_000)))
    started = time.process_time()
    tally = RowTally()
    pairs = read_pairs_from_files([str(path)], id_prefix="t-", tally=tally)
    check_pairs(pairs[:99_000], pairs[99_000:], {"max_overlap": 0.0}, tally)
    seconds = time.process_time() - started
    assert len(pairs) == 100_000 and seconds < 10, f"{seconds:.1f} s"


def test_the_report_shows_the_data_checks_table():
    from ablate.collect.report import _diagnostics, to_markdown

    finding = {"data": "files", "file": "train.jsonl", "finding": "skipped: null", "count": 2, "of": 9,
               "example": "train.jsonl line 5: column 'chosen' is null"}
    markdown = to_markdown(_diagnostics({"data_checks": [finding]}, "avglogp_accuracy", "95%"), Path("."))
    assert "Data checks" in markdown and "skipped: null" in markdown and "2 of 9" in markdown
    assert "train.jsonl line 5: column 'chosen' is null" in markdown
    empty = to_markdown(_diagnostics({}, "avglogp_accuracy", "95%"), Path("."))
    assert "Nothing found: no row skipped or rewritten" in empty
