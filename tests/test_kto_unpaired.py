"""KTO on its own data: unpaired prompt/completion/label rows (trl-lib/kto-mix-14k layout).

Such rows train objective=kto only (a paired objective is refused when the sweep is planned); held-out
metrics need pairs, so unpaired held-out rows are paired up by prompt. The KTO loss on unpaired
examples is TRL's (one term per example), and the KL batch never gives a prompt a completion of its own
prompt.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.data.pairs import PreferencePair, UnpairedExample, pair_by_prompt, read_pairs_from_files
from ablate.data.readers import DataError
from ablate.sweep.run import run_cell
from ablate.train.embedded import verbosity_trap_pairs
from ablate.train.objectives import OBJECTIVES, SequenceLogps
from ablate.train.scoring import mismatch_partners
from ablate.train.shared import load_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "data"
FILE_TRAINER = [o for o in TINY if not o.startswith("data.")] + ["data.max_length=64", "data.max_prompt_length=16"]


def unpaired_rows(pairs, with_slice: bool = False) -> list[dict]:
    """Each pair unrolled into a desirable and an undesirable row, as kto-mix-14k was built from dpo-mix-7k."""
    rows = []
    for p in pairs:
        extra = {"slice": p.slice} if with_slice else {}
        rows += [{"prompt": p.prompt, "completion": p.chosen, "label": True, **extra},
                 {"prompt": p.prompt, "completion": p.rejected, "label": False, **extra}]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------- reading
def test_unpaired_rows_read_as_labelled_examples():
    examples = read_pairs_from_files([str(FIXTURES / "kto_unpaired.jsonl")], id_prefix="t-")
    assert all(isinstance(e, UnpairedExample) for e in examples)
    assert [e.label for e in examples] == [True, True, False, False]
    assert examples[0].completion == " Paris." and examples[0].prompt.endswith("\n\nAssistant:")


def test_unpaired_columns_can_be_mapped(compose_cfg, tmp_path):
    """data.columns maps completion and label too (it once refused them: a stale copy of the column names)."""
    from ablate.config import cell_problems
    from ablate.data.pairs import RowFormat

    columns = "data.columns={prompt: q, completion: answer, label: good}"
    cfg = compose_cfg(["objective=kto", "data=files", "data.train_files=[kto.jsonl]", columns])
    assert cell_problems(cfg) == []
    path = write_jsonl(tmp_path / "kto.jsonl", [{"q": "2+2?", "answer": " 4", "good": True},
                                                {"q": "2+2?", "answer": " 5", "good": False}])
    examples = read_pairs_from_files([str(path)], id_prefix="t-", row_format=RowFormat.of(cfg.data))
    assert [(e.prompt, e.completion, e.label) for e in examples] == [("2+2?", " 4", True), ("2+2?", " 5", False)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "completion": "a", "label": "yes"}, "line 2: column 'label' must be true (desirable) or "
                                                             "false (undesirable), got 'yes'"),
        ({"prompt": "q", "completion": "", "label": True}, "line 2: column 'completion' is empty"),
        ({"prompt": "q", "completion": [{"role": "user", "content": "hi"}], "label": False},
         "line 2: column 'completion' must end with an assistant message, not 'user'"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "line 2: a preference pair (chosen/rejected) among an "
                                                          "unpaired prompt/completion/label row"),
    ],
)
def test_bad_unpaired_rows_are_named_by_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": "c", "label": 1}, row])
    with pytest.raises(DataError) as error:
        read_pairs_from_files([str(path)], id_prefix="")
    assert str(error.value).startswith(f"{path} {message}")


def test_conversational_unpaired_rows_take_the_prompt_from_the_messages(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": [{"role": "user", "content": "Hi?"}], "completion": [{"role": "assistant", "content": "Hello."}],
         "label": True},
        {"completion": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
         "label": False},
    ])
    good, bad = read_pairs_from_files([str(path)], id_prefix="")
    assert good.prompt == bad.prompt == [{"role": "user", "content": "Hi?"}]
    assert (good.completion, good.label, bad.completion, bad.label) == ("Hello.", True, "Go away.", False)


def test_held_out_rows_pair_up_by_prompt_and_leftovers_are_counted():
    e = [UnpairedExample("a1", "A", "good a", True), UnpairedExample("b1", "B", "bad b", False),
         UnpairedExample("a2", "A", "bad a", False), UnpairedExample("a3", "A", "worse a", False),
         UnpairedExample("c1", "C", "good c", True)]
    pairs, leftover = pair_by_prompt(e)
    assert pairs == [PreferencePair("a1+a2", "A", "good a", "bad a")]
    assert leftover == 3  # a3 (no second desirable for A), b1 (no desirable for B), c1 (no undesirable for C)
    with pytest.raises(DataError, match="none of the 2 unpaired held-out rows has a partner"):
        from ablate.train.shared import _paired

        _paired([e[1], e[4]], "data x", None)


# ------------------------------------------------------------------------------------------ the loss
def test_unpaired_kto_loss_is_trls_per_example_loss():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(3, generator=g), torch.randn(5, generator=g)
    ref_c, ref_r = torch.randn(3, generator=g), torch.randn(5, generator=g)
    kl_p, kl_r = torch.randn(8, generator=g), torch.randn(8, generator=g) - 1
    logps = SequenceLogps(chosen, rejected, torch.ones(3), torch.ones(5), ref_c, ref_r, kl_p, kl_r, paired=False)
    out = OBJECTIVES["kto"](logps, beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)
    # TRL's KTOTrainer.kto_loss, written out: losses of the desirable examples, then of the undesirable ones
    z0 = max(0.0, (kl_p - kl_r).mean().item())
    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    desirable = zip(chosen.tolist(), ref_c.tolist(), strict=True)
    undesirable = zip(rejected.tolist(), ref_r.tolist(), strict=True)
    expected = [1.5 * (1 - sigmoid(0.3 * ((c - rc) - z0))) for c, rc in desirable]
    expected += [0.5 * (1 - sigmoid(0.3 * (z0 - (r - rr)))) for r, rr in undesirable]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.shape == (3,) and out.rejected_rewards.shape == (5,)


def test_unpaired_and_paired_kto_sum_to_the_same_batch_loss():
    g = torch.Generator().manual_seed(1)
    values = [torch.randn(4, generator=g) for _ in range(6)]
    fields = dict(chosen=values[0], rejected=values[1], chosen_tokens=torch.ones(4), rejected_tokens=torch.ones(4),
                  ref_chosen=values[2], ref_rejected=values[3], kl_policy=values[4], kl_reference=values[5])
    paired = OBJECTIVES["kto"](SequenceLogps(**fields), beta=0.1)
    unpaired = OBJECTIVES["kto"](SequenceLogps(**fields, paired=False), beta=0.1)
    assert paired.losses.shape == (4,) and unpaired.losses.shape == (8,)
    assert unpaired.losses.sum().item() == pytest.approx(paired.losses.sum().item(), rel=1e-6)


def test_paired_objectives_refuse_unpaired_examples():
    logps = SequenceLogps(torch.zeros(2), torch.zeros(3), torch.ones(2), torch.ones(3), torch.zeros(2),
                          torch.zeros(3), paired=False)
    with pytest.raises(ValueError, match="dpo compares the chosen and the rejected completion of a pair"):
        OBJECTIVES["dpo"](logps, beta=0.1)


@settings(max_examples=200, deadline=None)
@given(prompts=st.lists(st.integers(0, 3), min_size=2, max_size=12), data=st.data())
def test_kl_partners_never_share_the_prompt(prompts, data):
    prompt_ids = [[p] for p in prompts]
    if len(set(prompts)) < 2:
        with pytest.raises(ValueError, match="at least two different prompts"):
            mismatch_partners(prompt_ids, [0])
        return
    idx = data.draw(st.lists(st.integers(0, len(prompts) - 1), min_size=1, max_size=8))
    partners = mismatch_partners(prompt_ids, idx)
    assert len(partners) == len(idx)
    assert all(prompt_ids[j] != prompt_ids[i] for i, j in zip(idx, partners, strict=True))


# ------------------------------------------------------------------------------------ whole sweeps
@pytest.fixture
def unpaired_files(compose_cfg, tmp_path):
    train, heldout = verbosity_trap_pairs(compose_cfg(TINY).data)
    return (write_jsonl(tmp_path / "train.jsonl", unpaired_rows(train)),
            write_jsonl(tmp_path / "heldout.jsonl", unpaired_rows(heldout, with_slice=True)), heldout)


@pytest.mark.parametrize("objective", ["kto", "apo_zero_unpaired"])
def test_unpaired_objectives_train_on_unpaired_rows_and_are_scored_on_pairs(compose_cfg, tmp_path, unpaired_files,
                                                                             objective):
    train_file, heldout_file, heldout = unpaired_files
    overrides = ["data=files", f"data.train_files=['{train_file}']", f"data.heldout_files=['{heldout_file}']",
                 f"objective={objective}", *FILE_TRAINER]
    metrics = run_cell(compose_cfg(overrides), tmp_path / "sweep", overrides)
    assert metrics["heldout/pairs"] == len(heldout)
    assert metrics["heldout/verbose_rejected/pairs"] == sum(p.slice == "verbose_rejected" for p in heldout)
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    cell = next((tmp_path / "sweep" / "cells").iterdir())
    log = [json.loads(line) for line in (cell / "train_log.jsonl").read_text().splitlines()]
    assert all("rewards/accuracies" not in e for e in log)  # unpaired data: no accuracy, as in TRL's KTO
    for e in log:
        assert e["rewards/margins"] == pytest.approx(e["rewards/chosen"] - e["rewards/rejected"])
    record = json.loads(next((tmp_path / "sweep" / "shared").glob("data-*.json")).read_text())
    assert record["train_format"] == "unpaired"
    assert record["train"]["examples"] == 2 * record["train"]["pairs"] == 128
    pairs = pd.read_parquet(cell / "heldout_pairs.parquet")
    assert len(pairs) == len(heldout) and pairs.pair_id.str.contains(r"\+").all()
    # the reference was scored for exactly the examples the run visited (6 steps x 8 of 128)
    reference = torch.load(next((tmp_path / "sweep" / "shared").glob("reference-train-*.pt")))
    assert set(reference) == {"logps", "tokens"} and (~reference["logps"].isnan()).sum().item() == 48


def test_a_paired_objective_on_unpaired_rows_stops_the_sweep_before_any_cell(repo_root, tmp_path, unpaired_files):
    train_file, heldout_file, _ = unpaired_files
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "objective=kto,dpo", "seed=0", "data=files",
                           f"data.train_files=[{train_file}]", f"data.heldout_files=[{heldout_file}]",
                           "data.max_length=64", "data.max_prompt_length=16", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unpaired prompt/completion/label rows (KTO format), which only kto and apo_zero_unpaired train on; " \
           "objective dpo needs preference pairs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (sweep_dir / "cells").exists()


def test_kto_mix_config_reads_the_hub_layout(compose_cfg, tmp_path):
    """trl-lib/kto-mix-14k: prompt and completion are message lists, label a bool; train and test splits."""
    (tmp_path / "kto" / "data").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 3)):
        rows = []
        for i in range(n):
            user = [{"role": "user", "content": f"{split} question {i}?"}]
            rows += [{"prompt": user, "completion": [{"role": "assistant", "content": f"good {i}"}], "label": True},
                     {"prompt": user, "completion": [{"role": "assistant", "content": f"bad {i}"}], "label": False}]
        rows += [{"prompt": [{"role": "user", "content": f"{split} lonely?"}],
                  "completion": [{"role": "assistant", "content": "alone"}], "label": True}]
        pd.DataFrame(rows).to_parquet(tmp_path / "kto" / "data" / f"{split}-00000-of-00001.parquet")
    assert compose_cfg(["data=kto_mix"]).data.path == "trl-lib/kto-mix-14k"
    cfg = compose_cfg(["data=kto_mix", f"data.path={tmp_path / 'kto'}"])
    from ablate.data.pairs import RowTally

    tally = RowTally()
    train, heldout = load_pairs(cfg.data, tally)
    assert len(train) == 13 and all(isinstance(e, UnpairedExample) for e in train)
    assert train[0].prompt == [{"role": "user", "content": "train question 0?"}] and train[0].completion == "good 0"
    assert [(p.chosen, p.rejected) for p in heldout] == [("good 0", "bad 0"), ("good 1", "bad 1"), ("good 2", "bad 2")]
    assert sum(n for rewrites in tally.rewrites.values() for n in rewrites.values()) == 1  # "test lonely?"
