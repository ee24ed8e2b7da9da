"""Cell ids are pinned: a finished cell is never retrained because a schema grew a key (ablate/sweepdir/ids.py).

The ids below were computed by the code that trained the sweeps on disk; the key list in
tests/golden/id_keys.json is every key the id hashes. A new schema key must either go into
ablate.sweepdir.ids.ADDED_KEYS with its default (existing ids unchanged) or, if it must rename cells,
into the golden list, with the golden ids updated and the reason in the commit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ablate.sweepdir import ids
from ablate.sweepdir.ids import ADDED_KEYS, NOT_HASHED, SEMANTIC_KEYS, cell_id

GOLDEN_KEYS = Path(__file__).parent / "golden" / "id_keys.json"

PINNED = {
    "1f5969ed79db": [],  # the embedded default (dpo, r=8, seed 0)
    "dc01656c4ddc": ["objective=simpo", "lora.r=16", "seed=2"],
    "1d489624dd2b": ["model=hub", "model.path=Qwen/Qwen2.5-0.5B-Instruct", "trainer=hub", "data=files",
                     "data.train_files=[train.jsonl]", "data.heldout_files=[test.jsonl]"],
    "1c4a0376d1bd": ["objective=kto", "data=files", "data.train_files=[kto.jsonl]", "data.format=unpaired"],
    "ad70b7c1f256": ["model=hub", "model.path=Qwen/Qwen2.5-0.5B-Instruct", "data=ultrafeedback"],
    "8a522474ca7a": ["data.validation_pairs=100", "objective.beta=0.3", "trainer.lr=0.002"],  # a tuned cell
    "adde1f663f15": ["trainer.group_by_length=true"],
}


@pytest.mark.parametrize(("expected", "overrides"), PINNED.items(),
                         ids=[" ".join(o) or "default" for o in PINNED.values()])
def test_pinned_cell_ids(compose_cfg, expected, overrides):
    assert cell_id(compose_cfg(overrides)) == expected


def schema_keys(compose_cfg, repo_root) -> dict[str, list[str]]:
    """Every key of the semantic groups, over every option of each group (group -> sorted keys)."""
    keys: dict[str, set[str]] = {group: set() for group in SEMANTIC_KEYS if group != "seed"}
    for group in keys:
        for option in sorted(p.stem for p in (repo_root / "conf" / group).glob("*.yaml")):
            plain = OmegaConf.to_container(compose_cfg([f"{group}={option}"]), resolve=False)
            keys[group] |= set(plain[group])
    return {group: sorted(values) for group, values in keys.items()}


def test_every_schema_key_is_in_the_id_or_explicitly_outside_it(compose_cfg, repo_root):
    golden = json.loads(GOLDEN_KEYS.read_text())
    for group, keys in schema_keys(compose_cfg, repo_root).items():
        outside = set(ADDED_KEYS.get(group, {})) | NOT_HASHED.get(group, set())
        new = sorted(set(keys) - set(golden[group]) - outside)
        assert not new, (f"{group}.{new[0]} is a new key: add it to ablate.sweepdir.ids.ADDED_KEYS with its default "
                         f"(existing cell ids stay), or to {GOLDEN_KEYS.name} if it must rename every cell")


def test_keys_that_change_nothing_computed_are_never_hashed(compose_cfg):
    cfg = compose_cfg([])
    assert cell_id(compose_cfg(["trainer.checkpoint_every=5"])) == cell_id(cfg) == "1f5969ed79db"


def test_a_new_key_at_its_default_keeps_every_pinned_id(compose_cfg, monkeypatch):
    """What adding `trainer.new_knob: int = 0` to the schema does, once it is listed with its default."""
    monkeypatch.setattr(ids, "ADDED_KEYS", copy.deepcopy(ADDED_KEYS) | {"trainer": ADDED_KEYS["trainer"]
                                                                        | {"new_knob": 0}})
    for expected, overrides in PINNED.items():
        plain = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
        plain["trainer"]["new_knob"] = 0
        assert cell_id(plain) == expected
        plain["trainer"]["new_knob"] = 3  # a value that changes training: a new cell
        assert cell_id(plain) != expected


def test_an_unlisted_new_key_would_rename_cells(compose_cfg):
    """Why the list exists: the id hashes every key it is not told to leave out."""
    plain = OmegaConf.to_container(compose_cfg([]), resolve=True)
    plain["trainer"]["new_knob"] = 0
    assert cell_id(plain) != "1f5969ed79db"
