"""The data of a sweep are read, validated and tokenised once, at planning time (ablate/train/shared.py).

A broken row stops the sweep before any cell starts (exit 2, file and 1-based line in the message);
cells then load the tokens the launcher stored and never read the data files themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ablate.data.readers import DataError
from ablate.sweepdir.ids import as_plain
from ablate.train.shared import prepare_sweep_data, tokenized_pairs, tokens_path

GOOD = [
    {"prompt": "echo a b c", "chosen": "rev : c b a", "rejected": "copy : a b c"},
    {"prompt": "echo d e f", "chosen": "rev : f e d", "rejected": "copy : d e f"},
    {"prompt": "echo p o n", "chosen": "copy : p o n", "rejected": "rev : n o p"},
]
HELDOUT = [{"prompt": "echo p p p", "chosen": "copy : p p p", "rejected": "rev : p p p"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def file_data(train: Path, heldout: Path) -> list[str]:
    return ["data=files", f"data.train_files=[{train}]", f"data.heldout_files=[{heldout}]",
            "data.max_length=64", "data.max_prompt_length=16"]


def test_cells_reuse_the_data_prepared_at_planning_without_reading_the_files(compose_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    cells = [compose_cfg([*file_data(train, heldout), f"objective={o}"]) for o in ("dpo", "simpo")]
    shared = tmp_path / "shared"
    [line] = prepare_sweep_data([as_plain(c) for c in cells], shared)
    assert "3 training / 1 held-out pairs checked and tokenised" in line and "shared by 2 cell(s)" in line
    record = json.loads(next(shared.glob("data-*.json")).read_text())
    assert record["checks"]["rows_read"] == {str(train): 3, str(heldout): 1}
    from ablate.data.pairs import tokenize_pairs
    from ablate.train.models import load_tokenizer
    from ablate.train.shared import load_pairs

    tokenizer = load_tokenizer(cells[1].model)
    fresh = [tokenize_pairs(part, tokenizer, max_length=64, max_prompt_length=16) for part in load_pairs(cells[1].data)]
    train.unlink()  # a cell that read the files again would now fail
    heldout.unlink()
    tokens = tokenized_pairs(cells[1], tokenizer, shared)
    assert tokens["train"].pair_ids == ["train-0", "train-1", "train-2"]
    assert [tokens["train"], tokens["heldout"]] == fresh  # stored packed, loaded back exactly
    assert tokens_path(cells[0], shared) == tokens_path(as_plain(cells[1]), shared)
    again = prepare_sweep_data([as_plain(cells[0])], shared)
    assert again == [f"data {train}, {heldout}: prepared already (1 cell(s))"]


def test_every_bad_source_is_named_once_in_one_error(compose_cfg, tmp_path):
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    bad_a = write_jsonl(tmp_path / "a.jsonl", [GOOD[0], {**GOOD[1], "chosen": None}])
    bad_b = tmp_path / "b.jsonl"
    bad_b.write_text(json.dumps(GOOD[0]) + "\n" + '{"prompt": "echo a", "chosen": "rev : a",\n')
    cells = [as_plain(compose_cfg([*file_data(bad, heldout), f"seed={s}"])) for bad in (bad_a, bad_b) for s in (0, 1)]
    with pytest.raises(DataError) as error:
        prepare_sweep_data(cells, tmp_path / "shared")
    message = str(error.value)
    assert message.startswith("2 data source(s) cannot be used; nothing was run")
    assert f"{bad_a} line 2: column 'chosen' is null" in message
    assert f"{bad_b} line 2: malformed JSON: Expecting property name enclosed in double quotes" in message
    assert not (tmp_path / "shared").exists()


def test_a_tokenizer_that_cannot_be_loaded_stops_planning(compose_cfg, tmp_path):
    cfg = as_plain(compose_cfg(["model=hub", f"model.path={tmp_path / 'no-model'}"]))
    with pytest.raises(DataError, match=rf"model {tmp_path / 'no-model'}: its tokenizer cannot be loaded"):
        prepare_sweep_data([cfg], tmp_path / "shared")


def test_broken_data_stops_a_local_two_cell_sweep_before_any_cell_starts(repo_root, tmp_path):
    """The real command line: exit 2, the file and its 1-based line named, no cell directory, no sweep.json."""
    train = write_jsonl(tmp_path / "train.jsonl", [GOOD[0], GOOD[1], {**GOOD[2], "rejected": ""}])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "objective=dpo,simpo", "seed=0",
                           *file_data(train, heldout), f"hydra.sweep.dir={sweep_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DataError: 1 data source(s) cannot be used; nothing was run" in proc.stderr
    assert f"{train} line 3: column 'rejected' is empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (sweep_dir / "cells").exists() and not (sweep_dir / "sweep.json").exists()


def test_single_run_with_bad_data_exits_2_without_a_running_cell(repo_root, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [GOOD[0], {**GOOD[1], "prompt": 3}])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ablate", *file_data(train, heldout), f"hydra.run.dir={run_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{train} line 2: column 'prompt' must be a string or a list of messages, got 3" in proc.stderr
    assert not list(run_dir.glob("cells/*/status.json"))


def test_plain_dict_and_composed_configs_share_one_tokens_file(compose_cfg, tmp_path):
    cfg = compose_cfg([])
    assert tokens_path(cfg, tmp_path) == tokens_path(OmegaConf.to_container(cfg, resolve=True), tmp_path)


def test_forced_unknown_keys_and_a_renamed_objective_stop_the_sweep_with_exit_2(repo_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "+lora.rank=4,8", "objective.name=ipo", "seed=0",
                           f"hydra.sweep.dir={sweep_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ConfigError: 2 of 2 cells are invalid; nothing was run" in proc.stderr
    assert "lora.rank: unknown key" in proc.stderr and "objective.name = 'ipo'" in proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    assert not (sweep_dir / "cells").exists()


def test_the_tokenizer_built_in_code_is_the_one_saved_beside_the_embedded_model(compose_cfg, tmp_path):
    """Planning tokenises with build_tokenizer() (no model build); cells used to load the saved copy."""
    from transformers import AutoTokenizer

    from ablate.train.embedded import build_tokenizer, verbosity_trap_pairs
    from ablate.train.models import load_tokenizer

    build_tokenizer().save_pretrained(tmp_path)  # what embedded_model_dir saves
    saved = AutoTokenizer.from_pretrained(tmp_path)
    built = load_tokenizer(compose_cfg([]).model)
    train, heldout = verbosity_trap_pairs(compose_cfg(["data.n_train=64", "data.n_heldout_per_slice=8"]).data)
    texts = [text for p in train + heldout for text in (p.prompt, p.chosen, p.rejected)]
    assert built(texts)["input_ids"] == saved(texts)["input_ids"]
    assert (built.bos_token_id, built.eos_token_id, built.pad_token_id) == \
        (saved.bos_token_id, saved.eos_token_id, saved.pad_token_id)
