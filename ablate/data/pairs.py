"""Preference pairs from local files or a Hugging Face dataset, and their tokenisation.

Every source ends as a list of `PreferencePair`, or of `UnpairedExample` for unpaired KTO rows
(prompt/completion/label); the embedded task in ablate/train/embedded.py builds pairs too. The
launcher reads and validates every data source of a sweep once, at planning time
(ablate/train/shared.py), so a bad row stops the sweep before any cell starts, with an error that names
the file and its 1-based line (JSONL/JSON) or row index (Parquet, hub splits) and the column.
Row formats (`data.format`, default `auto` picks per row):
- explicit: `prompt`, `chosen`, `rejected` strings; when both completions repeat the whole prompt
  at their start (whole transcripts beside a prompt column), the repeat is removed and counted;
- conversational: `chosen`/`rejected` are message lists ending with the assistant's answer; the
  prompt is the messages before it (HuggingFaceH4/ultrafeedback_binarized) or, when there are none,
  the `prompt` column (a string or a message list, TRL's "conversational" format);
- implicit prompt (Anthropic/hh-rlhf): no prompt column, `chosen`/`rejected` are whole transcripts;
  their longest common prefix ending at the last assistant marker ("\n\nAssistant:") is the prompt;
- unpaired (trl-lib/kto-mix-14k, KTO's own format): `prompt`, `completion`, `label` (true: desirable).
  Such rows train `kto` only; as held-out data they are paired up by prompt (`pair_by_prompt`),
  because every held-out metric compares a chosen with a rejected completion of one prompt.
`data.columns` maps these names onto a file's own (`{prompt: question, chosen: good, ...}`).
Optional columns: `id` (else f"{id_prefix}{row}") and `slice` (held-out slice tag, docs/ARCHITECTURE.md §5).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ablate.data.chat import ChatTokens, ChatTruncation, as_messages
from ablate.data.readers import BadRow, DataError, RawRow, read_file, read_hub_split
from ablate.progress import track

FORMATS = ("auto", "explicit", "implicit_prompt", "unpaired")
BAD_ROW_POLICIES = ("error", "skip")
HH_ASSISTANT_MARKER = "\n\nAssistant:"
HH_HUMAN_MARKER = "\n\nHuman:"
# Names a row format knows; data.columns may map exactly these.
CANONICAL_COLUMNS = ("prompt", "chosen", "rejected", "id", "slice", "completion", "label")
_BATCH = 1024  # texts per tokenizer call: large enough for the fast tokenizer's Rust threads


@dataclass(frozen=True)
class PreferencePair:
    pair_id: str
    prompt: str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}, ...]
    chosen: str | list[dict]  # completion text, or messages whose LAST (assistant) one is the completion
    rejected: str | list[dict]
    slice: str | None = None  # optional tag for held-out slices
    split: str | None = None  # held-out pairs only, when data.validation_pairs is set: validation | test


@dataclass(frozen=True)
class UnpairedExample:
    """One prompt with one completion labelled desirable (True) or undesirable (False): KTO's data."""

    example_id: str
    prompt: str | list[dict]
    completion: str
    label: bool
    slice: str | None = None

    @property
    def pair_id(self) -> str:  # the readers key every row by its id, whatever its kind
        return self.example_id


@dataclass(frozen=True)
class RowFormat:
    """How rows become pairs: `data.format`, `data.columns` and `data.assistant_marker`."""

    format: str = "auto"
    columns: dict = field(default_factory=dict)  # canonical name -> the source's column name
    assistant_marker: str = HH_ASSISTANT_MARKER

    @classmethod
    def of(cls, data_cfg) -> RowFormat:
        get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
        columns = get("columns", None) or {}
        return cls(get("format", "auto") or "auto", {str(k): str(v) for k, v in dict(columns).items()},
                   get("assistant_marker", HH_ASSISTANT_MARKER) or HH_ASSISTANT_MARKER)

    def name(self, column: str) -> str:
        """A column as the user knows it: 'question' (data.columns.prompt), or 'prompt'."""
        return f"{self.columns[column]!r} (data.columns.{column})" if column in self.columns else repr(column)

    def renamed(self, values: dict) -> dict:
        if not self.columns:
            return values
        row = {k: v for k, v in values.items() if k not in self.columns}
        row |= {canonical: values[source] for canonical, source in self.columns.items() if source in values}
        return row


@dataclass
class RowTally:
    """What reading saw, per source: rows read, rows skipped by reason, rewrites made (data record)."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> its first occurrence, "where: detail"
    rewrites: dict[str, dict[str, int]] = field(default_factory=dict)

    def skip(self, source: str, reason: str, example: str) -> None:
        per_source = self.skipped.setdefault(source, {})
        per_source[reason] = per_source.get(reason, 0) + 1
        self.examples.setdefault(reason, example)

    def rewrite(self, source: str, what: str, count: int = 1) -> None:
        per_source = self.rewrites.setdefault(source, {})
        per_source[what] = per_source.get(what, 0) + count

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def total_skipped(self) -> int:
        return sum(n for reasons in self.skipped.values() for n in reasons.values())


PROMPT_REPEATED = "prompt repeated at the start of both completions (removed from them)"
PROMPT_AT_START = "both completions start with the whole prompt (kept: the prompt does not end at an assistant marker)"


def read_pairs_from_files(files: list[str], *, id_prefix: str, row_format: RowFormat | None = None,
                          on_bad_row: str = "error", tally: RowTally | None = None) -> list[PreferencePair]:
    """Read .jsonl / .json / .parquet files (by extension), each validated on its own."""
    if not files:
        raise DataError("no data files given")
    pairs: list[PreferencePair] = []
    file_of_id: dict[str, str] = {}
    for file in files:
        rows = read_file(str(file))
        # Row numbers restart in every file, so several files get the file name in their default ids.
        prefix = id_prefix if len(files) == 1 else f"{id_prefix}{Path(file).stem}-"
        for pair in rows_to_pairs(rows, source=str(file), id_prefix=prefix, row_format=row_format,
                                  on_bad_row=on_bad_row, tally=tally):
            if pair.pair_id in file_of_id:  # held-out results are keyed by id, so ids must be unique
                raise DataError(f"{file}: id {pair.pair_id!r} is already used in {file_of_id[pair.pair_id]}")
            file_of_id[pair.pair_id] = file
            pairs.append(pair)
    return pairs


def read_pairs_from_hub(path: str, split: str, *, name: str | None = None, revision: str | None = None,
                        row_format: RowFormat | None = None, on_bad_row: str = "error",
                        tally: RowTally | None = None) -> list[PreferencePair]:
    """Read one split of a Hugging Face dataset: a hub id or a local directory of data files."""
    source, rows = read_hub_split(path, split, name=name, revision=revision)
    return rows_to_pairs(rows, source=source, id_prefix=f"{split}-", row_format=row_format,
                         on_bad_row=on_bad_row, tally=tally)


def rows_to_pairs(rows: Iterable[RawRow | dict], *, source: str, id_prefix: str, row_format: RowFormat | None = None,
                  on_bad_row: str = "error", tally: RowTally | None = None) -> list[PreferencePair]:
    """Validate raw rows into pairs; `source` names the file or dataset in errors.

    on_bad_row="error" stops at the first bad row (DataError naming where it is); "skip" drops it and
    counts it in `tally` by reason. Plain dicts are named by their 0-based row index.
    """
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    row_format = row_format or RowFormat()
    tally = tally if tally is not None else RowTally()
    tally.rows.setdefault(source, 0)
    pairs: list[PreferencePair | UnpairedExample] = []
    where_of_id: dict[str, str] = {}
    first_kind: tuple[type, str] | None = None  # (kind, where) of the first good row: a source holds one kind
    for index, raw in enumerate(rows):
        if not isinstance(raw, RawRow):
            raw = RawRow(f"{source} row index {index}", raw)
        tally.rows[source] += 1
        try:
            if raw.problem is not None:
                raise raw.problem
            pair = _row_to_pair(row_format.renamed(raw.values), row_format, f"{id_prefix}{index}",
                                lambda what: tally.rewrite(source, what))
            if pair.pair_id in where_of_id:
                raise BadRow("duplicate id", f"id {pair.pair_id!r} is already used at {where_of_id[pair.pair_id]}")
            if first_kind is not None and type(pair) is not first_kind[0]:
                raise BadRow("mixed formats", f"{_KIND_NAMES[type(pair)]} among {_KIND_NAMES[first_kind[0]]} "
                             f"(the first at {first_kind[1]}): a source holds one kind of row")
        except BadRow as bad:
            if on_bad_row == "error" or (bad.reason == "missing column" and index == 0 and not pairs):
                # a column missing from the first row is the file's layout, not one bad row
                raise DataError(f"{raw.where}: {bad.detail}") from None
            tally.skip(source, bad.reason, f"{raw.where}: {bad.detail}")
            continue
        where_of_id[pair.pair_id] = raw.where
        first_kind = first_kind or (type(pair), raw.where)
        pairs.append(pair)
    if not pairs:
        skipped = tally.skipped.get(source)
        raise DataError(f"{source}: no usable rows" + (f" (skipped: {_counts(skipped)})" if skipped else "")
                        if tally.rows[source] else f"{source}: no rows")
    return pairs


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _row_to_pair(row: dict, fmt: RowFormat, default_id: str, rewrite) -> PreferencePair | UnpairedExample:
    if fmt.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt.format!r}")
    if fmt.format == "unpaired" or (fmt.format == "auto" and "chosen" not in row and "rejected" not in row
                                    and "completion" in row and "label" in row):
        return _row_to_example(row, fmt, default_id)
    needed = ("prompt", "chosen", "rejected") if fmt.format == "explicit" else ("chosen", "rejected")
    for column in needed:
        if column not in row:
            raise BadRow("missing column", f"missing column {fmt.name(column)} (columns: {', '.join(row)})")
    if fmt.format == "implicit_prompt" or (fmt.format == "auto" and "prompt" not in row
                                           and isinstance(row["chosen"], str) and isinstance(row["rejected"], str)):
        prompt, chosen, rejected = implicit_prompt(row["chosen"], row["rejected"], fmt)
    elif "prompt" not in row:  # auto, message lists: the prompt is the conversation before the answer
        chosen, chosen_context = _completion(row["chosen"], "chosen", fmt)
        rejected, rejected_context = _completion(row["rejected"], "rejected", fmt)
        _same_context(chosen, chosen_context, rejected, rejected_context, fmt)
        if not chosen_context:
            raise BadRow("missing column", f"missing column {fmt.name('prompt')} (the completions are single "
                         f"assistant messages; columns: {', '.join(row)})")
        prompt = chosen_context
    else:
        prompt, chosen, rejected = split_conversation(row["prompt"], row["chosen"], row["rejected"], fmt)
        if isinstance(prompt, str) and isinstance(row["chosen"], str) and isinstance(row["rejected"], str) \
                and chosen.startswith(prompt) and rejected.startswith(prompt):
            if prompt.rstrip().endswith(fmt.assistant_marker.strip()):
                # whole transcripts beside a prompt column: training on them would put the prompt in both answers
                chosen = _text(chosen[len(prompt):], "chosen", fmt)
                rejected = _text(rejected[len(prompt):], "rejected", fmt)
                rewrite(PROMPT_REPEATED)
            else:  # maybe an answer that quotes the question: kept, but counted for the user to judge
                rewrite(PROMPT_AT_START)
    pair_id = _pair_id(row.get("id"), "id" in row, default_id, fmt)
    tag = row.get("slice")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise BadRow("bad slice", f"column {fmt.name('slice')} must be a non-empty string or null, got {tag!r}")
    return PreferencePair(pair_id, prompt, chosen, rejected, tag)


_KIND_NAMES = {PreferencePair: "a preference pair (chosen/rejected)",
               UnpairedExample: "an unpaired prompt/completion/label row"}


def _row_to_example(row: dict, fmt: RowFormat, default_id: str) -> UnpairedExample:
    """KTO's unpaired format: prompt (text or messages), completion (text, or messages ending with the
    assistant's answer, whose earlier messages are then the prompt, as for pairs) and a boolean label."""
    for column in ("prompt", "completion", "label"):
        if column not in row and not (column == "prompt" and isinstance(row.get("completion"), list)):
            raise BadRow("missing column", f"missing column {fmt.name(column)} (columns: {', '.join(row)}; "
                         "unpaired rows need prompt, completion, label)")
    completion, context = _completion(row["completion"], "completion", fmt)
    if context:
        prompt = context
    elif "prompt" not in row:
        raise BadRow("missing column", f"missing column {fmt.name('prompt')} (the completion is a single "
                     f"assistant message; columns: {', '.join(row)})")
    elif isinstance(row["prompt"], str) or row["prompt"] is None:
        prompt = _text(row["prompt"], "prompt", fmt)
    else:
        prompt = _messages(row["prompt"], "prompt", fmt)
    label = row["label"]
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise BadRow("bad label", f"column {fmt.name('label')} must be true (desirable) or false (undesirable), "
                     f"got {label!r:.80}")
    tag = row.get("slice")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise BadRow("bad slice", f"column {fmt.name('slice')} must be a non-empty string or null, got {tag!r}")
    return UnpairedExample(_pair_id(row.get("id"), "id" in row, default_id, fmt), prompt, completion, label, tag)


def pair_by_prompt(examples: list[UnpairedExample]) -> tuple[list[PreferencePair], int]:
    """Held-out pairs from unpaired rows: the k-th desirable and the k-th undesirable completion of a
    prompt, in row order (kto-mix-14k unrolls one pair per prompt into exactly such two rows). Returns
    the pairs, in the order of their prompts' first rows, and how many rows found no partner."""
    groups: dict[str, tuple[list[UnpairedExample], list[UnpairedExample]]] = {}
    for example in examples:
        groups.setdefault(prompt_key(example.prompt), ([], []))[0 if example.label else 1].append(example)
    pairs = []
    for desirable, undesirable in groups.values():
        for good, bad in zip(desirable, undesirable, strict=False):
            tag = good.slice if good.slice == bad.slice else None
            pairs.append(PreferencePair(f"{good.example_id}+{bad.example_id}", good.prompt, good.completion,
                                        bad.completion, tag))
    return pairs, len(examples) - 2 * len(pairs)


def implicit_prompt(chosen, rejected, fmt: RowFormat = RowFormat()) -> tuple[str, str, str]:
    """HH-RLHF: (prompt, chosen completion, rejected completion) from two whole transcripts.

    The prompt is their longest common prefix that ends with the last assistant marker inside it,
    marker included; each completion is the rest of its transcript (HH's start with a space).
    """
    chosen, rejected = _text(chosen, "chosen", fmt), _text(rejected, "rejected", fmt)
    if chosen == rejected:
        raise BadRow("chosen == rejected",
                     f"{fmt.name('chosen')} and {fmt.name('rejected')} are identical, so they carry no preference")
    # Binary search on slice equality: C-speed compares, not a Python loop over characters.
    low, high = 0, min(len(chosen), len(rejected))
    while low < high:
        mid = (low + high + 1) // 2
        if chosen[:mid] == rejected[:mid]:
            low = mid
        else:
            high = mid - 1
    marker = fmt.assistant_marker
    end = chosen.rfind(marker, 0, low)
    if end < 0 or end + len(marker) > low:
        raise BadRow("no shared prompt", f"no prompt column, and {fmt.name('chosen')} and {fmt.name('rejected')} "
                     f"share no prefix ending at an assistant marker {marker!r} (HH-RLHF format); give a prompt "
                     "column (or data.columns.prompt), or set data.assistant_marker")
    end += len(marker)
    return chosen[:end], _text(chosen[end:], "chosen", fmt), _text(rejected[end:], "rejected", fmt)


def split_conversation(prompt, chosen, rejected, where: str | RowFormat = "") -> tuple[str | list[dict], str, str]:
    """Return (prompt text or messages, chosen completion text, rejected completion text).

    Raises BadRow; given a string `where` (a pair already validated), a ValueError naming it.
    """
    fmt = where if isinstance(where, RowFormat) else RowFormat()
    try:
        chosen_text, chosen_context = _completion(chosen, "chosen", fmt)
        rejected_text, rejected_context = _completion(rejected, "rejected", fmt)
        _same_context(chosen_text, chosen_context, rejected_text, rejected_context, fmt)
        if chosen_context:
            return chosen_context, chosen_text, rejected_text
        if isinstance(prompt, str) or prompt is None:
            return _text(prompt, "prompt", fmt), chosen_text, rejected_text
        return _messages(prompt, "prompt", fmt), chosen_text, rejected_text
    except BadRow as bad:
        if isinstance(where, str):
            raise ValueError(f"{where}: {bad.detail}") from None
        raise


def _same_context(chosen_text, chosen_context, rejected_text, rejected_context, fmt: RowFormat) -> None:
    if chosen_context != rejected_context:
        raise BadRow("different conversations", f"{fmt.name('chosen')} and {fmt.name('rejected')} differ "
                     "before their final assistant message")
    if chosen_text == rejected_text:
        raise BadRow("chosen == rejected",
                     f"{fmt.name('chosen')} and {fmt.name('rejected')} are identical, so they carry no preference")


def _completion(value, column: str, fmt: RowFormat) -> tuple[str, list[dict]]:
    if isinstance(value, str) or value is None:
        return _text(value, column, fmt), []
    messages = _messages(value, column, fmt)
    last = messages[-1]
    if last["role"] != "assistant":
        raise BadRow("no assistant answer",
                     f"column {fmt.name(column)} must end with an assistant message, not {last['role']!r}")
    return _text(last["content"], column, fmt), messages[:-1]


def _text(value, column: str, fmt: RowFormat) -> str:
    if value is None:
        raise BadRow("null", f"column {fmt.name(column)} is null")
    if not isinstance(value, str):
        raise BadRow("wrong type", f"column {fmt.name(column)} must be a string or a list of messages, "
                     f"got {value!r:.80}")
    if not value.strip():
        raise BadRow("empty", f"column {fmt.name(column)} is empty")
    return value


def _messages(value, column: str, fmt: RowFormat) -> list[dict]:
    if value is None:
        raise BadRow("null", f"column {fmt.name(column)} is null")
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise BadRow("wrong type", f"column {fmt.name(column)} must be a string or a list of messages, "
                     f"got {value!r:.80}")
    if not value:
        raise BadRow("empty", f"column {fmt.name(column)} is empty")
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise BadRow("bad message", f"column {fmt.name(column)} has a message without string "
                         f"'role'/'content': {m!r:.80}")
    # Parquet structs may carry extra (null) fields; templates and comparisons want just these two.
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _pair_id(value, has_column: bool, default: str, fmt: RowFormat) -> str:
    if not has_column:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise BadRow("bad id", f"column {fmt.name('id')} must be a non-empty string or integer, got {value!r:.80}")
    return str(value)


def prompt_key(prompt: str | list[dict]) -> str:
    """One hashable text per prompt, plain or chat messages (two prompts are the same iff keys are)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_heldout(
    pairs: list[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic (train, heldout) split by prompt; each part keeps the input order.

    Pairs that share a prompt stay on the same side, so the split itself never puts a training
    prompt among the held-out pairs. With distinct prompts it is a plain random split of pairs.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out, got {len(pairs)}")
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(prompt_key(pair.prompt), []).append(i)
    if len(groups) < 2:
        raise ValueError("every pair has the same prompt: no held-out pair can have an unseen prompt")
    n_heldout = min(max(round(len(pairs) * fraction), 1), len(pairs) - 1)
    order = list(groups.values())
    random.Random(seed).shuffle(order)  # a private RNG: global seeding elsewhere cannot move the split
    heldout: set[int] = set()
    for group in order:
        if len(heldout) >= n_heldout:
            break
        if len(heldout) + len(group) < len(pairs):  # keep at least one training pair
            heldout.update(group)
    return (
        [p for i, p in enumerate(pairs) if i not in heldout],
        [p for i, p in enumerate(pairs) if i in heldout],
    )


def split_validation_test(
    heldout: list[PreferencePair], validation_pairs: int, test_pairs: int | None, seed: int
) -> list[PreferencePair]:
    """Tag held-out pairs `validation` or `test` (disjoint), drawn once by `seed`; input order kept.

    Tuned sweeps pick each objective's setting on validation pairs and decide on test pairs only
    (ablate.collect.tuning). test_pairs None: every pair not drawn for validation. Pairs in neither
    part are dropped, so every cell scores exactly the same two sets.
    """
    n = len(heldout)
    n_test = n - validation_pairs if test_pairs is None else test_pairs
    if validation_pairs < 1 or n_test < 1 or validation_pairs + n_test > n:
        raise ValueError(
            f"data.validation_pairs = {validation_pairs}, data.test_pairs = {test_pairs}: need at least one pair "
            f"in each and at most the {n} held-out pairs in all"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)  # a private RNG, as in split_heldout: nothing else can move it
    split_of = {i: "validation" for i in order[:validation_pairs]}
    split_of |= {i: "test" for i in order[validation_pairs : validation_pairs + n_test]}
    return [replace(p, split=split_of[i]) for i, p in enumerate(heldout) if i in split_of]


@dataclass(frozen=True)
class TokenizedPairs:
    pair_ids: list[str] = field(default_factory=list)
    slices: list[str | None] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)  # validation | test; empty when not split
    prompt_ids: list[list[int]] = field(default_factory=list)  # incl. BOS / chat generation prompt
    chosen_ids: list[list[int]] = field(default_factory=list)  # completion only, EOS appended
    rejected_ids: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pair_ids)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer, *, max_length: int, max_prompt_length: int,
    human_marker: str = HH_HUMAN_MARKER, assistant_marker: str = HH_ASSISTANT_MARKER,
    truncation: ChatTruncation | None = None,
) -> TokenizedPairs:
    """Tokenise prompt and completions separately (as TRL does), so the completion boundary is exact.

    With a chat template, pairs take TRL's conversational layout (ablate/data/chat.py: a text transcript
    becomes its turns, completions are what the template adds after the prompt) and an over-long prompt
    loses whole turns first (counted in `truncation`). Over max_length, a plain-text prompt is cut from
    the left to max_prompt_length (its end holds the question and the generation prompt; a leading BOS
    is kept), then each completion from the right to fit.
    """
    eos, bos = _end_tokens(tokenizer, max_length, max_prompt_length)
    chat = ChatTokens(tokenizer, lambda texts: _ids(texts, tokenizer, add_special_tokens=False), eos) \
        if getattr(tokenizer, "chat_template", None) else None
    truncation = truncation if truncation is not None else ChatTruncation()
    out, identical = TokenizedPairs(), []
    batches = range(0, len(pairs), _BATCH)
    for start in track(batches, desc="tokenising pairs", unit="batch", disable=len(pairs) < 5000):
        batch = pairs[start : start + _BATCH]
        parts = [split_conversation(p.prompt, p.chosen, p.rejected, f"pair {p.pair_id!r}") for p in batch]
        if chat is None:
            prompts = _prompt_ids([prompt for prompt, _, _ in parts], tokenizer)
            chosen = _ids([c for _, c, _ in parts], tokenizer, add_special_tokens=False)
            rejected = _ids([r for _, _, r in parts], tokenizer, add_special_tokens=False)
            tokens = [(p, c + [eos], r + [eos]) for p, c, r in zip(prompts, chosen, rejected, strict=True)]
        else:
            tokens = _chat_pairs(chat, batch, parts, max_length, max_prompt_length, human_marker, assistant_marker,
                                 truncation)
        for pair, (p, c, r) in zip(batch, tokens, strict=True):
            p, c, r = _truncate(p, c, r, max_length, max_prompt_length, bos)
            if c == r:
                identical.append(pair.pair_id)
            out.pair_ids.append(pair.pair_id)
            out.slices.append(pair.slice)
            out.splits.append(pair.split)
            out.prompt_ids.append(p)
            out.chosen_ids.append(c)
            out.rejected_ids.append(r)
    if identical:
        # Not an error: such a pair only gives a zero margin, but a user should know it is dead weight.
        warnings.warn(
            f"{len(identical)} pair(s) have identical chosen/rejected tokens after tokenisation/truncation "
            f"(e.g. {', '.join(identical[:3])})",
            stacklevel=2,
        )
    return out


def _chat_pairs(chat: ChatTokens, batch, parts, max_length: int, max_prompt_length: int, human_marker: str,
                assistant_marker: str, truncation: ChatTruncation) -> list[tuple[list[int], list[int], list[int]]]:
    """A batch's pairs in TRL's conversational layout; over-long pairs re-rendered with their prompt fitted
    by turns (ChatTokens.fit_prompt)."""
    prompts, chosen, rejected = [], [], []
    for prompt, c, r in parts:
        messages, transcript = as_messages(prompt, human_marker, assistant_marker)
        prompts.append(messages)
        chosen.append(c.strip() if transcript else c)  # HH completions start with the space after the marker
        rejected.append(r.strip() if transcript else r)
    tokens = chat.pairs(prompts, chosen, rejected)
    for k, (p, c, r) in enumerate(tokens):
        if len(p) + max(len(c), len(r)) > max_length and len(p) > max_prompt_length:
            fitted = chat.fit_prompt(prompts[k], max_prompt_length, truncation, getattr(batch[k], "pair_id", ""))
            tokens[k] = chat.pairs([fitted], [chosen[k]], [rejected[k]])[0]
    return tokens


@dataclass(frozen=True)
class TokenizedExamples:
    """Unpaired training examples (KTO): one completion per prompt, labelled desirable or not."""

    example_ids: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)  # incl. BOS / chat generation prompt
    completion_ids: list[list[int]] = field(default_factory=list)  # EOS appended
    labels: list[bool] = field(default_factory=list)  # True: desirable

    def __len__(self) -> int:
        return len(self.example_ids)


def tokenize_examples(
    examples: list[UnpairedExample], tokenizer, *, max_length: int, max_prompt_length: int,
    human_marker: str = HH_HUMAN_MARKER, assistant_marker: str = HH_ASSISTANT_MARKER,
) -> TokenizedExamples:
    """As tokenize_pairs, for unpaired rows: the same prompt template, EOS and truncation rules."""
    eos, bos = _end_tokens(tokenizer, max_length, max_prompt_length)
    chat = ChatTokens(tokenizer, lambda texts: _ids(texts, tokenizer, add_special_tokens=False), eos) \
        if getattr(tokenizer, "chat_template", None) else None
    out = TokenizedExamples()
    for start in track(range(0, len(examples), _BATCH), desc="tokenising examples", unit="batch",
                       disable=len(examples) < 5000):
        batch = examples[start : start + _BATCH]
        if chat is None:
            prompts = _prompt_ids([e.prompt for e in batch], tokenizer)
            completions = [c + [eos] for c in _ids([e.completion for e in batch], tokenizer, add_special_tokens=False)]
        else:  # one completion as both sides of a pair: the same layout as pairs
            tokens = _chat_pairs(chat, batch, [(e.prompt, e.completion, e.completion) for e in batch], max_length,
                                 max_prompt_length, human_marker, assistant_marker, ChatTruncation())
            prompts, completions = [p for p, _, _ in tokens], [c for _, c, _ in tokens]
        for example, p, c in zip(batch, prompts, completions, strict=True):
            p, c, _ = _truncate(p, c, c, max_length, max_prompt_length, bos)
            out.example_ids.append(example.example_id)
            out.prompt_ids.append(p)
            out.completion_ids.append(c)
            out.labels.append(example.label)
    return out


def _end_tokens(tokenizer, max_length: int, max_prompt_length: int) -> tuple[int, int | None]:
    """(EOS, BOS or None) for tokenising, once the length limits are known to be usable."""
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; completions must end with one")
    return tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None)


def _prompt_ids(prompts: list[str | list[dict]], tokenizer) -> list[list[int]]:
    """Prompts for a tokenizer without a chat template: a message list becomes its contents, blank-line separated."""
    texts = [p if isinstance(p, str) else "\n\n".join(m["content"] for m in p) for p in prompts]
    return _ids(texts, tokenizer, add_special_tokens=True)


def _ids(texts: list[str], tokenizer, *, add_special_tokens: bool) -> list[list[int]]:
    # Skipping the masks we never use halves transformers' per-text Python overhead on short texts.
    encoded = tokenizer(
        texts, add_special_tokens=add_special_tokens, return_attention_mask=False, return_token_type_ids=False
    )
    return [list(ids) for ids in encoded["input_ids"]]


def _truncate(prompt, chosen, rejected, max_length: int, max_prompt_length: int, bos):
    # One prompt serves both completions, so it is cut against the longer of the two.
    if len(prompt) + max(len(chosen), len(rejected)) > max_length and len(prompt) > max_prompt_length:
        keep_bos = int(bos is not None and prompt[0] == bos)  # models never saw text without it
        prompt = prompt[:keep_bos] + prompt[len(prompt) - max_prompt_length + keep_bos :]
    room = max_length - len(prompt)  # >= 1 because max_prompt_length < max_length
    return prompt, chosen[:room], rejected[:room]
