"""Inputs shared by every cell of a sweep: tokenised pairs and reference log-probs (docs/ARCHITECTURE.md §4).

Neither depends on the objective, the LoRA rank or the seed, so each is computed once per sweep
and stored under <sweep_dir>/shared/, keyed by what it does depend on: tokens by (tokenizer, data),
reference log-probs by (base model, tokenizer, data, max length). The launchers prepare the tokens
of every distinct data source at planning time (`prepare_sweep_data`): the data are read, validated
and tokenised there, once, and a bad source stops the sweep before any cell starts or is
submitted; cells then load the stored result. Files are written atomically, so cells running
concurrently at worst compute the same file twice.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ablate.data.chat import ChatTruncation
from ablate.data.checks import check_pairs
from ablate.data.pairs import (
    HH_ASSISTANT_MARKER,
    HH_HUMAN_MARKER,
    PreferencePair,
    RowFormat,
    RowTally,
    TokenizedExamples,
    TokenizedPairs,
    UnpairedExample,
    pair_by_prompt,
    read_pairs_from_files,
    read_pairs_from_hub,
    split_heldout,
    split_validation_test,
    tokenize_examples,
    tokenize_pairs,
)
from ablate.data.readers import DataError
from ablate.sweepdir.atomic import atomic_write_bytes, atomic_write_json
from ablate.sweepdir.ids import as_plain, config_hash
from ablate.train.engine import compute_context
from ablate.train.scoring import score_pairs


def load_pairs(data_cfg, tally: RowTally | None = None) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training and held-out pairs for any data source; the split never depends on the cell's seed."""
    tally = tally if tally is not None else RowTally()
    read = dict(row_format=RowFormat.of(data_cfg), on_bad_row=data_cfg.get("on_bad_row", "error"), tally=tally)
    if data_cfg.kind == "verbosity_trap":
        from ablate.train.embedded import verbosity_trap_pairs

        train, heldout = verbosity_trap_pairs(data_cfg)
    elif data_cfg.kind == "files":
        train = read_pairs_from_files(list(data_cfg.train_files), id_prefix="train-", **read)
        if data_cfg.heldout_files:
            heldout = read_pairs_from_files(list(data_cfg.heldout_files), id_prefix="heldout-", **read)
        else:
            train, heldout = _split(train, data_cfg, f"data.train_files={list(data_cfg.train_files)}")
    elif data_cfg.kind == "hub":
        train = read_pairs_from_hub(data_cfg.path, data_cfg.train_split, name=data_cfg.name,
                                    revision=data_cfg.revision, **read)
        if data_cfg.heldout_split:
            heldout = read_pairs_from_hub(data_cfg.path, data_cfg.heldout_split, name=data_cfg.name,
                                          revision=data_cfg.revision, **read)
        else:
            train, heldout = _split(train, data_cfg, f"{data_cfg.path} split {data_cfg.train_split!r}")
    else:
        raise ValueError(f"data.kind = {data_cfg.kind!r}: must be verbosity_trap, files or hub")
    _one_kind(train, _source_label(data_cfg))
    heldout = _paired(heldout, _source_label(data_cfg), tally)
    heldout = heldout[: data_cfg.max_heldout_pairs]
    if data_cfg.get("validation_pairs"):  # tuned sweeps: select on validation, decide on test
        heldout = split_validation_test(heldout, data_cfg.validation_pairs, data_cfg.get("test_pairs"),
                                        data_cfg.split_seed)
    return train[: data_cfg.max_train_pairs], heldout


UNPARTNERED = "unpaired held-out rows without a partner of the other label for their prompt (not scored)"


def _one_kind(train: list, source: str) -> None:
    """Training rows of several files must all be pairs or all be unpaired examples (each file is one kind)."""
    kinds = {type(x) for x in train}
    if len(kinds) > 1:
        raise DataError(f"{source}: the training files mix preference pairs with unpaired prompt/completion/label "
                        "rows; give one kind")


def _paired(heldout: list, source: str, tally: RowTally) -> list[PreferencePair]:
    """Held-out metrics compare chosen with rejected, so unpaired held-out rows are paired up by prompt."""
    _one_kind(heldout, source)
    if not heldout or isinstance(heldout[0], PreferencePair):
        return heldout
    pairs, unpartnered = pair_by_prompt(heldout)
    if not pairs:
        raise DataError(f"{source}: held-out metrics need pairs, and none of the {len(heldout)} unpaired held-out rows "
                        "has a partner (a desirable and an undesirable completion of the same prompt); give paired "
                        "held-out data (data.heldout_files / data.heldout_split with prompt/chosen/rejected rows)")
    if unpartnered:
        tally.rewrite(source, UNPARTNERED, unpartnered)
    return pairs


def _split(train, data_cfg, source: str):
    try:
        return split_heldout(train, data_cfg.heldout_fraction, data_cfg.split_seed)
    except ValueError as error:
        raise DataError(f"{source}: {error}") from None


def _load(path: Path):
    return torch.load(path, weights_only=False) if path.exists() else None


def _save(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def tokens_path(cfg, shared_dir: Path) -> Path:
    """Where a cell's tokenised data live: keyed by model identity (not dtype) and the data config."""
    model_identity = {k: v for k, v in as_plain(cfg["model"]).items() if k != "dtype"}
    return Path(shared_dir) / f"tokens-{config_hash([model_identity, as_plain(cfg['data'])])[:16]}.pt"


def record_path(tokens: Path) -> Path:
    """The data record beside a tokens file: lengths and planning checks, read by the collector."""
    return tokens.with_name(tokens.stem.replace("tokens-", "data-") + ".json")


def tokenized_pairs(cfg, tokenizer, shared_dir: Path) -> dict[str, TokenizedPairs | TokenizedExamples]:
    """{"train": ..., "heldout": ...}, read, checked and tokenised once per sweep (normally at planning).
    Training data are TokenizedExamples when the source holds unpaired (KTO) rows; held-out data are pairs."""
    path = tokens_path(cfg, shared_dir)
    record = record_path(path)
    cached = _load(path)
    if cached is not None and record.exists():
        return {split: _unpack(fields) for split, fields in cached.items()}
    # No tokens, or tokens without their record (deleted, or a sweep from before the record was written
    # first): read and check the data again, so the record is whole, never rebuilt from the tokens alone
    data_cfg = cfg["data"] if isinstance(cfg["data"], DictConfig) else OmegaConf.create(cfg["data"])
    tally = RowTally()
    train, heldout = load_pairs(data_cfg, tally)
    checks = check_pairs(train, heldout, data_cfg, tally)
    limits = {"max_length": data_cfg.max_length, "max_prompt_length": data_cfg.max_prompt_length,
              "human_marker": data_cfg.get("human_marker") or HH_HUMAN_MARKER,
              "assistant_marker": data_cfg.get("assistant_marker") or HH_ASSISTANT_MARKER}
    unpaired = bool(train) and isinstance(train[0], UnpairedExample)
    truncation = {"train": ChatTruncation(), "heldout": ChatTruncation()}
    tokens = {"train": tokenize_examples(train, tokenizer, **limits) if unpaired else
              tokenize_pairs(train, tokenizer, **limits, truncation=truncation["train"]),
              "heldout": tokenize_pairs(heldout, tokenizer, **limits, truncation=truncation["heldout"])}
    stats = {split: length_stats(t) for split, t in tokens.items()}
    chat = {"chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "truncated_by_turns": {split: t.as_record() for split, t in truncation.items()}}
    # the record first: a kill between the two writes leaves no tokens, so the next call redoes both
    atomic_write_json(record, {"data": as_plain(cfg["data"]), "train_format": "unpaired" if unpaired else "pairs",
                               **stats, "chat": chat, "checks": checks})
    if cached is None:
        _save(path, {split: _pack(t) for split, t in tokens.items()})
    return tokens


TOKEN_FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")
EXAMPLE_TOKEN_FIELDS = ("prompt_ids", "completion_ids")


def _pack(tokens: TokenizedPairs | TokenizedExamples) -> dict:
    """Token lists as one flat tensor + lengths each: pickling 10^7 Python ints one by one took ~25 s
    for 100k pairs (torch.save calls a hook per object); a tensor is one buffer."""
    if isinstance(tokens, TokenizedExamples):
        packed = {"kind": "examples", "example_ids": tokens.example_ids, "labels": tokens.labels}
        names = EXAMPLE_TOKEN_FIELDS
    else:
        packed = {"pair_ids": tokens.pair_ids, "slices": tokens.slices, "splits": tokens.splits}
        names = TOKEN_FIELDS
    for name in names:
        lists = getattr(tokens, name)
        packed[name] = (torch.tensor([t for ids in lists for t in ids], dtype=torch.int64),
                        torch.tensor([len(ids) for ids in lists], dtype=torch.int64))
    return packed


def _unpack(packed: dict) -> TokenizedPairs | TokenizedExamples:
    if packed.get("kind") == "examples":
        fields, names, kind = {"example_ids": packed["example_ids"], "labels": packed["labels"]}, \
            EXAMPLE_TOKEN_FIELDS, TokenizedExamples
    else:
        fields = {"pair_ids": packed["pair_ids"], "slices": packed["slices"], "splits": packed.get("splits", [])}
        names, kind = TOKEN_FIELDS, TokenizedPairs
    for name in names:
        flat, lengths = packed[name][0].tolist(), packed[name][1].tolist()
        ends = list(itertools.accumulate(lengths))
        fields[name] = [flat[end - n : end] for end, n in zip(ends, lengths, strict=True)]
    return kind(**fields)


def prepare_sweep_data(cells: list[dict], shared_dir: Path) -> list[str]:
    """Read, validate and tokenise every distinct data source of a sweep once, before any cell runs.

    `cells` are plain resolved cell configs. Returns one summary line per source; raises one
    DataError listing every bad source (each message names the file and line, or row index).
    """
    from ablate.train.models import load_tokenizer

    by_path: dict[Path, list[dict]] = {}
    for cfg in cells:
        by_path.setdefault(tokens_path(cfg, shared_dir), []).append(cfg)
    lines, errors, tokenizers = [], [], {}
    for path, users in by_path.items():
        cfg = users[0]
        label = _source_label(cfg["data"])
        if path.exists() and record_path(path).exists():  # prepared by an earlier run of this sweep: validated then
            problem = _objectives_refusing(users, record_path(path))
            errors += [f"[{label}] {problem}"] if problem else []
            lines.append(f"{label}: prepared already ({len(users)} cell(s))")
            continue
        started = time.monotonic()
        model_key = config_hash({k: v for k, v in cfg["model"].items() if k != "dtype"})
        try:
            if model_key not in tokenizers:
                tokenizers[model_key] = _tokenizer(load_tokenizer, cfg["model"])
            tokens = tokenized_pairs(cfg, tokenizers[model_key], shared_dir)
        except DataError as error:
            errors.append(f"[{label}] {error}")
            continue
        problem = _objectives_refusing(users, record_path(path))
        if problem:
            errors.append(f"[{label}] {problem}")
            continue
        lines.append(f"{label}: {len(tokens['train'])} training / {len(tokens['heldout'])} held-out pairs checked "
                     f"and tokenised in {time.monotonic() - started:.1f} s, shared by {len(users)} cell(s)")
    if errors:
        raise DataError(f"{len(errors)} data source(s) cannot be used; nothing was run:\n  " + "\n  ".join(errors))
    return lines


def _objectives_refusing(users: list[dict], record: Path) -> str | None:
    """Unpaired training rows train only an objective that learns from single labelled completions (kto)."""
    from ablate.train.objectives import OBJECTIVES

    try:
        unpaired = json.loads(record.read_text()).get("train_format") == "unpaired"
    except (OSError, ValueError):
        return None  # unreadable: tokenized_pairs rebuilds it, and the cell's own check still stands
    if not unpaired:
        return None
    refusing = sorted({cfg["objective"]["name"] for cfg in users} - {n for n, o in OBJECTIVES.items() if o.unpaired})
    if not refusing:
        return None
    return (f"the training rows are unpaired prompt/completion/label rows (KTO format), which only "
            f"{' and '.join(n for n, o in OBJECTIVES.items() if o.unpaired)} train on; objective "
            f"{', '.join(refusing)} needs preference pairs (prompt/chosen/rejected rows): drop it from the sweep "
            "or give paired data")


def _tokenizer(load_tokenizer, model: dict):
    try:
        return load_tokenizer(OmegaConf.create(model))
    except Exception as error:  # a wrong path or hub id: say so now, not in every cell
        where = model.get("path") or model.get("kind")
        raise DataError(f"model {where}: its tokenizer cannot be loaded ({type(error).__name__}: {error})") from None


def _source_label(data: dict) -> str:
    if data["kind"] == "files":
        return "data " + ", ".join(map(str, [*data["train_files"], *data["heldout_files"]]))
    if data["kind"] == "hub":
        return f"data {data['path']}"
    return f"data {data['kind']}"


def length_stats(pairs: TokenizedPairs | TokenizedExamples) -> dict:
    """Chosen vs rejected completion lengths (tokens), for the collector's brevity/verbosity check.

    Unpaired examples: desirable vs undesirable, the shares over the desirable/undesirable completions
    of one prompt paired up as for held-out data (none when no prompt has both: not checked).
    """
    if isinstance(pairs, TokenizedExamples):
        by_prompt: dict[tuple, tuple[list[int], list[int]]] = {}
        for prompt, completion, label in zip(pairs.prompt_ids, pairs.completion_ids, pairs.labels, strict=True):
            by_prompt.setdefault(tuple(prompt), ([], []))[0 if label else 1].append(len(completion))
        matched = [(c, r) for good, bad in by_prompt.values() for c, r in zip(good, bad, strict=False)]
        lengths = [len(c) for c in pairs.completion_ids]
        desirable = [n for n, label in zip(lengths, pairs.labels, strict=True) if label]
        undesirable = [n for n, label in zip(lengths, pairs.labels, strict=True) if not label]
        return {
            "examples": len(pairs), "desirable": len(desirable), "undesirable": len(undesirable),
            "pairs": len(matched),  # prompt-matched desirable/undesirable completions
            "chosen_tokens_mean": _mean(desirable), "rejected_tokens_mean": _mean(undesirable),
            "chosen_longer_share": _mean([float(c > r) for c, r in matched]),
            "chosen_shorter_share": _mean([float(c < r) for c, r in matched]),
        }
    chosen = torch.tensor([len(c) for c in pairs.chosen_ids], dtype=torch.float64)
    rejected = torch.tensor([len(r) for r in pairs.rejected_ids], dtype=torch.float64)
    return {
        "pairs": len(pairs),
        "chosen_tokens_mean": chosen.mean().item(),
        "rejected_tokens_mean": rejected.mean().item(),
        "chosen_longer_share": (chosen > rejected).double().mean().item(),
        "chosen_shorter_share": (chosen < rejected).double().mean().item(),
    }


def model_identity(model_cfg) -> dict:
    """What the base model's log-probs depend on: its config, and for the embedded model where its weights came
    from (ablate.train.embedded.weights_tag: shipped, or warmed up on this machine)."""
    plain = as_plain(model_cfg)
    if plain.get("kind") == "embedded":
        from ablate.train.embedded import weights_tag

        return plain | {"weights": weights_tag(model_cfg)}
    return plain


def reference_logps(cfg, split: str, data: TokenizedPairs | TokenizedExamples, base_model, pad_id: int,
                    shared_dir: Path, indices: list[int] | None = None,
                    autocast: torch.dtype | None = None, forward=None, ranks=None, tail: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Summed completion log-probs of the base model (= the policy with its adapter disabled).

    Call before the adapter is added, or inside `model.disable_adapter()`. With `indices`, only
    those pairs are scored (the rest are NaN): a run visiting a fraction of the training pairs pays
    for that fraction only. The set of pairs is part of the file's key, so every cell with the same
    visiting plan (same seed, steps and batch size; or at least one full epoch, whatever the seed)
    shares one file whose values do not depend on which cell came first. Scores computed under
    autocast (`autocast`, e.g. bfloat16) get their own file: they differ by more than rounding.
    With `ranks` (a multi-task cell), the ranks score a share each and rank 0 writes the file;
    `forward` as in `score_pairs`. With `tail` (LD-DPO), pairs also get chosen_tail/rejected_tail: a file
    without them is scored again and rewritten with them (a superset: other cells read it as before).
    Collective with `ranks`: every rank must call it (it asks every rank whether the file is there, and
    scores on every rank or none).
    """
    everything = indices is None or set(indices) == set(range(len(data)))
    scope = [] if everything else [config_hash(sorted(set(indices)))[:16]]
    scope += [f"autocast={autocast}"] if autocast is not None else []
    key = config_hash([model_identity(cfg.model), as_plain(cfg.data), split, *scope])[:16]
    path = shared_dir / f"reference-{split}-{key}.pt"
    cached = _load(path)
    parts = ("tail",) if tail and isinstance(data, TokenizedPairs) else ()
    missing = cached is None or any(f"chosen_{part}" not in cached for part in parts)
    # every rank scores, or none: another cell may write the file between two ranks' looks at it
    if missing if ranks is None else ranks.any(missing):
        device = next(base_model.parameters()).device
        with compute_context(device, autocast):
            cached = score_pairs(base_model, data, batch_size=cfg.trainer.eval_batch_size, pad_id=pad_id,
                                 desc=f"reference log-probs ({split})", head_chunk=cfg.engine.head_chunk,
                                 max_tokens=cfg.engine.eval_batch_tokens, indices=None if everything else indices,
                                 forward=forward, ranks=ranks, parts=parts)
        if ranks is None or ranks.is_main:
            _save(path, cached)
    return cached


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
