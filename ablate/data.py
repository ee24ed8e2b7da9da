"""Preference pairs from local files or a Hugging Face dataset, and their tokenisation.

Every source ends as a list of `PreferencePair` (the embedded task in ablate/embedded.py builds
them too), validated here once so that a bad row fails before any cell starts, with an error that
names the file (or dataset + split), the row and the column. Accepted row formats:
- plain text: `prompt`, `chosen`, `rejected` strings;
- conversational: `chosen`/`rejected` are message lists ending with the assistant's answer; the
  prompt is the messages before it (HuggingFaceH4/ultrafeedback_binarized) or, when there are none,
  the `prompt` column (a string or a message list, TRL's "conversational" format).
Optional columns: `id` (else f"{id_prefix}{row}") and `slice` (held-out slice tag, DESIGN §5).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_BATCH = 1024  # texts per tokenizer call: large enough for the fast tokenizer's Rust threads


@dataclass(frozen=True)
class PreferencePair:
    pair_id: str
    prompt: str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}, ...]
    chosen: str | list[dict]  # completion text, or messages whose LAST (assistant) one is the completion
    rejected: str | list[dict]
    slice: str | None = None  # optional tag for held-out slices
    split: str | None = None  # held-out pairs only, when data.validation_pairs is set: validation | test


def read_pairs_from_files(files: list[str], *, id_prefix: str) -> list[PreferencePair]:
    """Read .jsonl / .json / .parquet files (by extension), each validated on its own."""
    import datasets  # imported here: ~1 s that runs on the embedded task never need to pay

    if not files:
        raise ValueError("no data files given")
    pairs: list[PreferencePair] = []
    file_of_id: dict[str, str] = {}
    for file in files:
        path = Path(file)
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{file}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {file}")
        rows = datasets.load_dataset(builder, data_files=str(path), split="train").to_list()
        # Row numbers restart in every file, so several files get the file name in their default ids.
        prefix = id_prefix if len(files) == 1 else f"{id_prefix}{path.stem}-"
        for pair in rows_to_pairs(rows, source=str(file), id_prefix=prefix):
            if pair.pair_id in file_of_id:  # held-out results are keyed by id, so ids must be unique
                raise ValueError(f"{file}: id {pair.pair_id!r} is already used in {file_of_id[pair.pair_id]}")
            file_of_id[pair.pair_id] = file
            pairs.append(pair)
    return pairs


def read_pairs_from_hub(
    path: str, split: str, *, name: str | None = None, revision: str | None = None
) -> list[PreferencePair]:
    """Read one split of a Hugging Face dataset: a hub id or a local directory of data files."""
    import datasets

    rows = datasets.load_dataset(path, name, split=split, revision=revision).to_list()
    source = f"{path}{f' ({name})' if name else ''} split {split!r}"
    return rows_to_pairs(rows, source=source, id_prefix=f"{split}-")


def rows_to_pairs(rows: Iterable[dict], *, source: str, id_prefix: str) -> list[PreferencePair]:
    """Validate raw rows (dicts) into pairs; `source` names the file or dataset in errors."""
    pairs: list[PreferencePair] = []
    row_of_id: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            # Every row of a file has the same columns, so a first-row miss is the file's fault.
            at = source if index == 0 else where
            raise ValueError(f"{at}: missing required column {missing[0]!r} (columns: {', '.join(row)})")
        prompt, chosen, rejected = split_conversation(row["prompt"], row["chosen"], row["rejected"], where)
        pair_id = _pair_id(row.get("id"), "id" in row, f"{id_prefix}{index}", where)
        if pair_id in row_of_id:
            raise ValueError(f"{where}: id {pair_id!r} is already used by row {row_of_id[pair_id]}")
        row_of_id[pair_id] = index
        tag = row.get("slice")
        if tag is not None and (not isinstance(tag, str) or not tag.strip()):
            raise ValueError(f"{where}: column 'slice' must be a non-empty string or null, got {tag!r}")
        pairs.append(PreferencePair(pair_id, prompt, chosen, rejected, tag))
    if not pairs:
        raise ValueError(f"{source}: no rows")
    return pairs


def split_conversation(prompt, chosen, rejected, where: str) -> tuple[str | list[dict], str, str]:
    """Return (prompt text or messages, chosen completion text, rejected completion text)."""
    chosen_text, chosen_context = _completion(chosen, "chosen", where)
    rejected_text, rejected_context = _completion(rejected, "rejected", where)
    if chosen_context != rejected_context:
        raise ValueError(f"{where}: 'chosen' and 'rejected' differ before their final assistant message")
    if chosen_text == rejected_text:
        raise ValueError(f"{where}: 'chosen' and 'rejected' are identical, so they carry no preference")
    if chosen_context:
        return chosen_context, chosen_text, rejected_text
    if isinstance(prompt, str):
        return _text(prompt, "prompt", where), chosen_text, rejected_text
    return _messages(prompt, "prompt", where), chosen_text, rejected_text


def _completion(value, column: str, where: str) -> tuple[str, list[dict]]:
    if isinstance(value, str):
        return _text(value, column, where), []
    messages = _messages(value, column, where)
    last = messages[-1]
    if last["role"] != "assistant":
        raise ValueError(
            f"{where}: column {column!r} must end with an assistant message, not {last['role']!r}"
        )
    return _text(last["content"], column, where), messages[:-1]


def _text(value, column: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: column {column!r} is empty{' (null)' if value is None else ''}")
    if not isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must be a string or a list of messages, got {value!r}")
    return value


def _messages(value, column: str, where: str) -> list[dict]:
    if value is None or (isinstance(value, Sequence) and not isinstance(value, str) and not value):
        raise ValueError(f"{where}: column {column!r} is empty{' (null)' if value is None else ''}")
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must be a string or a list of messages, got {value!r}")
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(
                f"{where}: column {column!r} has a message without string 'role'/'content': {m!r}"
            )
    # Parquet structs may carry extra (null) fields; templates and comparisons want just these two.
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _pair_id(value, has_column: bool, default: str, where: str) -> str:
    if not has_column:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"{where}: column 'id' must be a non-empty string or integer, got {value!r}")
    return str(value)


def split_heldout(
    pairs: list[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic (train, heldout) split; each part keeps the input order."""
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out, got {len(pairs)}")
    n_heldout = min(max(round(len(pairs) * fraction), 1), len(pairs) - 1)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)  # a private RNG: global seeding elsewhere cannot move the split
    heldout = set(order[:n_heldout])
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
    pairs: list[PreferencePair], tokenizer, *, max_length: int, max_prompt_length: int
) -> TokenizedPairs:
    """Tokenise prompt and completions separately (as TRL does), so the completion boundary is exact.

    Over max_length, the prompt is cut from the left to max_prompt_length (its end holds the question
    and the generation prompt; a leading BOS is kept), then each completion from the right to fit.
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; completions must end with one")
    bos = getattr(tokenizer, "bos_token_id", None)
    out, identical = TokenizedPairs(), []
    with tqdm(total=len(pairs), desc="tokenising pairs", unit="pair", disable=len(pairs) < 5000) as bar:
        for start in range(0, len(pairs), _BATCH):
            batch = pairs[start : start + _BATCH]
            parts = [split_conversation(p.prompt, p.chosen, p.rejected, f"pair {p.pair_id!r}") for p in batch]
            prompts = _prompt_ids([prompt for prompt, _, _ in parts], tokenizer)
            chosen = _ids([c for _, c, _ in parts], tokenizer, add_special_tokens=False)
            rejected = _ids([r for _, _, r in parts], tokenizer, add_special_tokens=False)
            for pair, p, c, r in zip(batch, prompts, chosen, rejected, strict=True):
                p, c, r = _truncate(p, c + [eos], r + [eos], max_length, max_prompt_length, bos)
                if c == r:
                    identical.append(pair.pair_id)
                out.pair_ids.append(pair.pair_id)
                out.slices.append(pair.slice)
                out.splits.append(pair.split)
                out.prompt_ids.append(p)
                out.chosen_ids.append(c)
                out.rejected_ids.append(r)
            bar.update(len(batch))
    if identical:
        # Not an error: such a pair only gives a zero margin, but a user should know it is dead weight.
        warnings.warn(
            f"{len(identical)} pair(s) have identical chosen/rejected tokens after tokenisation/truncation "
            f"(e.g. {', '.join(identical[:3])})",
            stacklevel=2,
        )
    return out


def _prompt_ids(prompts: list[str | list[dict]], tokenizer) -> list[list[int]]:
    if getattr(tokenizer, "chat_template", None):
        conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        return _ids(texts, tokenizer, add_special_tokens=False)  # the template writes BOS itself
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
