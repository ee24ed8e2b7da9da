"""Inputs shared by every cell of a sweep: tokenised pairs and reference log-probs (DESIGN §4).

Neither depends on the objective, the LoRA rank or the seed, so each is computed once per sweep
and stored under <sweep_dir>/shared/, keyed by what it does depend on: tokens by (tokenizer, data),
reference log-probs by (base model, tokenizer, data, max length). Files are written atomically,
so cells running concurrently at worst compute the same file twice.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ablate.cells import atomic_write_bytes, atomic_write_json, config_hash
from ablate.data import (
    PreferencePair,
    TokenizedPairs,
    read_pairs_from_files,
    read_pairs_from_hub,
    split_heldout,
    split_validation_test,
    tokenize_pairs,
)
from ablate.scoring import score_pairs


def load_pairs(data_cfg) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training and held-out pairs for any data source; the split never depends on the cell's seed."""
    if data_cfg.kind == "verbosity_trap":
        from ablate.embedded import verbosity_trap_pairs

        train, heldout = verbosity_trap_pairs(data_cfg)
    elif data_cfg.kind == "files":
        train = read_pairs_from_files(list(data_cfg.train_files), id_prefix="train-")
        if data_cfg.heldout_files:
            heldout = read_pairs_from_files(list(data_cfg.heldout_files), id_prefix="heldout-")
        else:
            train, heldout = split_heldout(train, data_cfg.heldout_fraction, data_cfg.split_seed)
    elif data_cfg.kind == "hub":
        train = read_pairs_from_hub(data_cfg.path, data_cfg.train_split, name=data_cfg.name,
                                    revision=data_cfg.revision)
        if data_cfg.heldout_split:
            heldout = read_pairs_from_hub(data_cfg.path, data_cfg.heldout_split, name=data_cfg.name,
                                          revision=data_cfg.revision)
        else:
            train, heldout = split_heldout(train, data_cfg.heldout_fraction, data_cfg.split_seed)
    else:
        raise ValueError(f"data.kind = {data_cfg.kind!r}: must be verbosity_trap, files or hub")
    heldout = heldout[: data_cfg.max_heldout_pairs]
    if data_cfg.get("validation_pairs"):  # tuned sweeps: select on validation, decide on test
        heldout = split_validation_test(heldout, data_cfg.validation_pairs, data_cfg.get("test_pairs"),
                                        data_cfg.split_seed)
    return train[: data_cfg.max_train_pairs], heldout


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def _load(path: Path):
    return torch.load(path, weights_only=False) if path.exists() else None


def _save(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def tokenized_pairs(cfg, tokenizer, shared_dir: Path) -> dict[str, TokenizedPairs]:
    """{"train": ..., "heldout": ...}, tokenised once per sweep."""
    model_identity = {k: v for k, v in _container(cfg.model).items() if k != "dtype"}
    path = shared_dir / f"tokens-{config_hash([model_identity, _container(cfg.data)])[:16]}.pt"
    cached = _load(path)
    if cached is not None:
        return {split: TokenizedPairs(**fields) for split, fields in cached.items()}
    train, heldout = load_pairs(cfg.data)
    limits = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
    tokens = {"train": tokenize_pairs(train, tokenizer, **limits),
              "heldout": tokenize_pairs(heldout, tokenizer, **limits)}
    _save(path, {split: asdict(t) for split, t in tokens.items()})
    stats = {split: length_stats(t) for split, t in tokens.items()}
    atomic_write_json(path.with_name(path.stem.replace("tokens-", "data-") + ".json"),
                      {"data": _container(cfg.data), **stats})
    return tokens


def length_stats(pairs: TokenizedPairs) -> dict:
    """Chosen vs rejected completion lengths (tokens), for the collector's brevity/verbosity check."""
    chosen = torch.tensor([len(c) for c in pairs.chosen_ids], dtype=torch.float64)
    rejected = torch.tensor([len(r) for r in pairs.rejected_ids], dtype=torch.float64)
    return {
        "pairs": len(pairs),
        "chosen_tokens_mean": chosen.mean().item(),
        "rejected_tokens_mean": rejected.mean().item(),
        "chosen_longer_share": (chosen > rejected).double().mean().item(),
        "chosen_shorter_share": (chosen < rejected).double().mean().item(),
    }


def reference_logps(cfg, split: str, data: TokenizedPairs, base_model, pad_id: int,
                    shared_dir: Path) -> dict[str, torch.Tensor]:
    """Summed completion log-probs of the base model (= the policy with its adapter disabled).

    Call before the adapter is added, or inside `model.disable_adapter()`.
    """
    key = config_hash([_container(cfg.model), _container(cfg.data), split])[:16]
    path = shared_dir / f"reference-{split}-{key}.pt"
    cached = _load(path)
    if cached is None:
        cached = score_pairs(base_model, data, batch_size=cfg.trainer.eval_batch_size, pad_id=pad_id,
                             desc=f"reference log-probs ({split})")
        _save(path, cached)
    return cached
