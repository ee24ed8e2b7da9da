"""A cell's id: 12 hex digits of the hash of what it computes, so a finished cell is never trained twice.

The rule, which every change to a config schema must keep:

- The id hashes the cell's semantic config: every key of the groups in SEMANTIC_KEYS (objective,
  lora, model, data, trainer) and the seed. Paths, launcher, logger, engine and device settings are
  outside it, so moving a sweep or switching launchers keeps every finished cell.
- A key added to one of those groups after sweeps existed goes into ADDED_KEYS with the value that
  means "as before" (its default; keys that only mean something with it follow it: `_left_out`).
  While a cell has that value the key is left out of the hash, so every existing id stays the
  same; a cell that sets another value gets a new id, as it must.
- tests/test_cell_ids.py pins the ids of a handful of configs and lists every schema key: a new key
  that is neither listed there nor in ADDED_KEYS fails it, so no id changes by accident.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

SEMANTIC_KEYS = ("objective", "lora", "model", "data", "trainer", "seed")

# group -> {key: its "as before" value}: left out of the id while the cell has that value
ADDED_KEYS = {
    # the validation/test split (tuned comparisons): off, nothing a cell computes changes
    "data": {"validation_pairs": None,
             # transcripts' user-turn marker (chat templates): HH's, as it always was
             "human_marker": "\n\nHuman:"},
    # length-grouped batches: off, the batches are what they always were
    "trainer": {"group_by_length": False},
    # a GGUF checkpoint: none, the model is what model.path names
    "model": {"gguf_file": None},
}


def _as_before(value, before) -> bool:
    """A flag whose "as before" is off counts as off for any false value (a hand-written config.yaml may say null)."""
    return not value if before is False else value == before


# group -> keys never hashed: how a cell runs, not what it computes
NOT_HASHED = {"trainer": {"checkpoint_every"}}


def _left_out(group: str, values: dict) -> set[str]:
    """Keys of `group` the id does not hash for these values."""
    out = {key for key, before in ADDED_KEYS.get(group, {}).items() if _as_before(values.get(key, before), before)}
    out |= NOT_HASHED.get(group, set()) & set(values)
    if group == "data" and "validation_pairs" in out:
        # the split's other keys go with it while it is off; split_seed came with the split for the embedded
        # task only (files and hub data had it before, for their train/held-out split)
        out |= {"test_pairs"} | ({"split_seed"} if values.get("kind") == "verbosity_trap" else set())
    return out


def as_plain(cfg: DictConfig | dict) -> dict:
    """The config as plain Python containers, resolved; `???` stays a string (checks are ~10x faster on it)."""
    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def semantic_config(cfg: DictConfig | dict) -> dict:
    """The part of a cell's config that its id hashes (see the rule above)."""
    plain = as_plain(cfg)
    semantic = {key: plain[key] for key in SEMANTIC_KEYS}
    for group, values in semantic.items():
        if isinstance(values, dict) and (out := _left_out(group, values)):
            semantic[group] = {k: v for k, v in values.items() if k not in out}
    return semantic


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def cell_id(cfg: DictConfig | dict) -> str:
    """12 hex digits of the hash of the semantic config (a DictConfig, or its plain resolved form)."""
    return config_hash(semantic_config(cfg))[:12]


def config_yaml(plain: dict) -> str:
    """config.yaml text of a plain resolved config; libyaml's C dumper when present (thousands per sweep)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(plain, Dumper=dumper, sort_keys=False, default_flow_style=False)
