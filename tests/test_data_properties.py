"""Property-based tests (hypothesis) of the readers: random rows in every file format, random breakage.

Properties: what is written is what is read, in every format; a broken row is named by its 1-based
line (JSONL, JSON) or row index (Parquet), whatever the text around it holds (newlines, U+2028,
quotes, non-ASCII); under on_bad_row=skip every good row survives and every bad one is counted;
the implicit (HH-RLHF) prompt splits a transcript exactly.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablate.data.pairs import RowFormat, RowTally, implicit_prompt, read_pairs_from_files
from ablate.data.readers import BadRow, DataError

# Text with the characters readers trip on: newlines, U+2028/2029, quotes, backslashes, non-ASCII.
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\n\r\u2028\"\\{}[],"),
               min_size=1, max_size=30).filter(lambda s: s.strip())
ROW = st.builds(lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r}, TEXT, TEXT, TEXT).filter(
    lambda row: row["chosen"] != row["rejected"])
BREAKAGE = st.sampled_from(["null", "empty", "wrong type", "missing column", "chosen == rejected"])
PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def broken(row: dict, kind: str) -> dict:
    return {"null": {**row, "chosen": None}, "empty": {**row, "chosen": " "}, "wrong type": {**row, "chosen": 7},
            "missing column": {"prompt": row["prompt"], "chosen": row["chosen"]},
            "chosen == rejected": {**row, "rejected": row["chosen"]}}[kind]


def write(path, rows: list[dict], suffix: str) -> str:
    """JSONL: one row per line. JSON: an array, one element per line after the opening '[' (element k on line
    k + 2). Parquet: a table (a column missing from one row becomes a null there)."""
    file = path / f"train{suffix}"
    if suffix == ".jsonl":
        file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        file.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]", encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(file)
    return str(file)


def location(suffix: str, index: int) -> str:
    return {".jsonl": f"line {index + 1}", ".json": f"line {index + 2}", ".parquet": f"row index {index}"}[suffix]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@PROFILE
@given(rows=st.lists(ROW, min_size=1, max_size=8))
def test_every_format_reads_back_what_was_written(tmp_path, suffix, rows):
    pairs = read_pairs_from_files([write(tmp_path, rows, suffix)], id_prefix="t-")
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == expected


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@PROFILE
@given(rows=st.lists(ROW, min_size=2, max_size=8), data=st.data())
def test_the_first_bad_row_is_named_by_its_line_or_row_index(tmp_path, suffix, rows, data):
    index = data.draw(st.integers(1, len(rows) - 1))  # not row 0: a column missing there is the file's layout
    kind = data.draw(BREAKAGE)
    if suffix == ".parquet" and kind in ("missing column", "wrong type"):
        kind = "null"  # a table has every column in every row, of one type
    rows = [*rows[:index], broken(rows[index], kind), *rows[index + 1:]]
    path = write(tmp_path, rows, suffix)
    with pytest.raises(DataError) as error:
        read_pairs_from_files([path], id_prefix="t-")
    assert str(error.value).startswith(f"{path} {location(suffix, index)}: ")


@PROFILE
@given(rows=st.lists(st.tuples(ROW, st.none() | BREAKAGE | st.just("malformed")), min_size=1, max_size=12))
def test_skip_keeps_every_good_row_and_counts_every_bad_one(tmp_path, rows):
    lines = []
    for row, kind in rows:
        if kind == "malformed":
            lines.append(json.dumps(row, ensure_ascii=False)[:-1])  # the closing brace cut off
        else:
            lines.append(json.dumps(broken(row, kind) if kind else row, ensure_ascii=False))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    good = [row for row, kind in rows if kind is None]
    tally = RowTally()
    if not good:
        with pytest.raises(DataError):
            read_pairs_from_files([str(path)], id_prefix="t-", on_bad_row="skip", tally=tally)
        return
    if rows[0][1] == "missing column":  # the file's first row sets its layout: an error under any policy
        with pytest.raises(DataError, match="line 1: missing column"):
            read_pairs_from_files([str(path)], id_prefix="t-", on_bad_row="skip", tally=tally)
        return
    pairs = read_pairs_from_files([str(path)], id_prefix="t-", on_bad_row="skip", tally=tally)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(r["prompt"], r["chosen"], r["rejected"])
                                                                 for r in good]
    assert [p.pair_id for p in pairs] == [f"t-{i}" for i, (_, kind) in enumerate(rows) if kind is None]
    assert tally.total_rows == len(rows) and tally.total_skipped == len(rows) - len(good)


MARKER = "\n\nAssistant:"
ANSWER = TEXT.filter(lambda s: MARKER not in s)


@PROFILE
@given(turns=st.lists(st.tuples(TEXT, ANSWER), max_size=3), question=TEXT, chosen=ANSWER, rejected=ANSWER)
def test_implicit_prompt_splits_hh_transcripts_exactly(turns, question, chosen, rejected):
    prompt = "".join(f"\n\nHuman: {q}{MARKER} {a}" for q, a in turns) + f"\n\nHuman: {question}{MARKER}"
    c, r = prompt + " " + chosen, prompt + " " + rejected
    if c == r:
        with pytest.raises(BadRow, match="identical"):
            implicit_prompt(c, r)
        return
    got_prompt, got_chosen, got_rejected = implicit_prompt(c, r)
    assert got_prompt + got_chosen == c and got_prompt + got_rejected == r
    assert got_prompt.endswith(MARKER)
    # the prompt is the given one unless the answers themselves start alike with a marker (they cannot here)
    assert got_prompt == prompt


@PROFILE
@given(a=TEXT, b=TEXT)
def test_transcripts_without_a_shared_marker_are_a_bad_row(a, b):
    if a == b or (MARKER in a and MARKER in b):
        return
    chosen, rejected = "\n\nHuman: " + a, "\n\nHuman: " + b + " "
    with pytest.raises(BadRow) as error:
        implicit_prompt(chosen, rejected, RowFormat("implicit_prompt"))
    assert error.value.reason in ("no shared prompt", "chosen == rejected")
