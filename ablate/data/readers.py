"""Raw rows of a data source, each with the place a user finds it at: file + line, or row index.

JSONL and JSON files are parsed here (not by `datasets`) so that every row keeps its 1-based line
number, as an editor shows it, and a malformed line becomes a reportable bad row instead of
`DatasetGenerationError: An error occurred while generating the dataset`. Parquet files and hub
splits have no lines: their rows are named by their 0-based row index, and said to be one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A data source that cannot be used as it is; raised before any cell starts (exit status 2)."""


class BadRow(ValueError):
    """One row that cannot become a pair. `reason` is a short category: rows skipped under
    `data.on_bad_row=skip` are counted by it; `detail` is the message a user reads."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class RawRow:
    where: str  # "train.jsonl line 5", "train.parquet row index 4", "org/set split 'test' row index 4"
    values: dict | None  # None when the row could not be parsed; `problem` says why
    problem: BadRow | None = None


def read_file(file: str) -> list[RawRow]:
    """Every row of a .jsonl / .json / .parquet file (chosen by extension), in file order."""
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{file}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
    if not path.is_file():
        raise DataError(f"{file}: data file not found")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # arrow raises several types for a corrupt or non-parquet file
            raise DataError(f"{file}: not a readable Parquet file ({type(error).__name__}: {error})") from None
        return [RawRow(f"{file} row index {i}", row) for i, row in enumerate(rows)]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(f"{file} line {line}: not UTF-8 text ({error.reason})") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        return list(_json_array(text, file))
    return list(_json_lines(text, file))  # .jsonl, and .json files written as JSON Lines (as `datasets` reads them)


def _json_lines(text: str, file: str) -> Iterator[RawRow]:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which are not line ends
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # a trailing or separating blank line is not a row
        where = f"{file} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            yield RawRow(where, None, BadRow("malformed JSON", f"malformed JSON: {error.msg} (column {error.colno})"))
            continue
        yield _object(where, value)


def _json_array(text: str, file: str) -> Iterator[RawRow]:
    """The elements of a top-level JSON array, each named by the line it starts on."""
    decoder = json.JSONDecoder()
    position, line, counted = text.index("[") + 1, 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    def skip_space(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    position = skip_space(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        where = f"{file} line {line_at(position)}"
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            # Unlike a JSON Lines file, an array cannot resume after a broken element: stop here.
            raise DataError(f"{file} line {error.lineno}: malformed JSON: {error.msg} (column {error.colno}); "
                            "a broken element of a JSON array cannot be skipped") from None
        yield _object(where, value)
        position = skip_space(position)
        if position < len(text) and text[position] == ",":
            position = skip_space(position + 1)
        elif position < len(text) and text[position] == "]":
            return
        else:
            raise DataError(f"{file} line {line_at(min(position, len(text)))}: malformed JSON: expected ',' or ']' "
                            "after an element of the top-level array")


def _object(where: str, value) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(where, None, BadRow("not an object", f"a row must be a JSON object, got {value!r:.80}"))
    return RawRow(where, value)


def read_hub_split(path: str, split: str, *, name: str | None, revision: str | None) -> tuple[str, list[RawRow]]:
    """One split of a Hugging Face dataset (a hub id or a local directory): (its name in messages, rows)."""
    import datasets

    source = f"{path}{f' ({name})' if name else ''} split {split!r}"
    try:
        rows = datasets.load_dataset(path, name, split=split, revision=revision).to_list()
    except Exception as error:  # unknown dataset or split, no network, unreadable files
        raise DataError(f"{source}: cannot be loaded ({type(error).__name__}: {error})") from None
    return source, [RawRow(f"{source} row index {i}", row) for i, row in enumerate(rows)]
