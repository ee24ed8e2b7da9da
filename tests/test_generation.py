"""Behaviour beyond ranking (eval.generate; ablate/train/generation.py, diagnostics.generation_report)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from ablate.collect.collector import collect
from ablate.sweep.run import run_cell
from ablate.train.embedded import judge
from ablate.train.generation import distinct_n, generation_enabled, prompt_sample, summarise


def test_the_embedded_rule_judges_what_was_written():
    assert judge("echo a b p", "rev : p b a") == {"correct": True, "exact": True}  # majority a-h: reverse
    assert judge("echo a b p", "rev : p b a well okay") == {"correct": True, "exact": False}  # filler ignored
    assert judge("echo a b p", "copy : a b p") == {"correct": False, "exact": False}  # the wrong mode
    assert judge("echo k p a", "copy : k p a") == {"correct": True, "exact": True}
    assert judge("echo k p a", "copy : a a a a") == {"correct": False, "exact": False}


def test_summaries_and_the_prompt_sample():
    rows = [{"tokens": 4, "eos": True, "token_ids": [1, 2, 3, 2], "correct": True, "exact": False},
            {"tokens": 6, "eos": False, "token_ids": [5, 5, 5, 5, 5, 5], "correct": False, "exact": False}]
    summary = summarise(rows)
    assert summary["tokens_mean"] == 5 and summary["eos_share"] == 0.5 and summary["correct"] == 0.5
    assert summary["distinct_2"] == distinct_n([[1, 2, 3, 2], [5] * 6]) == 4 / 8  # (1,2) (2,3) (3,2) (5,5)
    assert summary["reward_mean"] is None
    assert prompt_sample(100, 10, seed=0) == prompt_sample(100, 10, seed=0) != prompt_sample(100, 10, seed=1)
    assert len(prompt_sample(5, 10, seed=0)) == 5


def test_generation_is_on_for_the_embedded_example_only_unless_set():
    def cfg(kind, generate=None):
        return OmegaConf.create({"model": {"kind": kind}, "eval": {"generate": generate}})

    assert generation_enabled(cfg("embedded")) and not generation_enabled(cfg("hub"))
    assert generation_enabled(cfg("hub", True)) and not generation_enabled(cfg("embedded", False))


@pytest.fixture(scope="module")
def generated(compose_cfg, tmp_path_factory):
    sweep = tmp_path_factory.mktemp("gen")
    for objective in ("dpo", "simpo"):
        for seed in (0, 1):
            overrides = [f"objective={objective}", f"seed={seed}", "eval.prompts=8", "eval.samples=1",
                         "eval.max_new_tokens=12"]
            run_cell(compose_cfg([*TINY, *overrides]), sweep, overrides)
    return sweep


@pytest.mark.slow
def test_each_cell_writes_its_generations_and_their_metrics(generated):
    cells = sorted((generated / "cells").iterdir())
    for cell in cells:
        rows = pd.read_parquet(cell / "generations.parquet")
        assert len(rows) == 16 and sorted(rows["sample"].unique()) == [0, 1]  # 8 prompts x (greedy + 1 sample)
        assert set(rows.pair_id) == set(pd.read_parquet(cells[0] / "generations.parquet").pair_id)  # same prompts
        assert rows.tokens.max() <= 12 and rows.eos.dtype == bool
        assert {"correct", "exact", "prompt", "text"} <= set(rows.columns)
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["generation/tokens_mean"] == pytest.approx(rows.tokens.mean())
        assert metrics["generation/correct"] == pytest.approx(rows.correct.mean())
        assert 0 <= metrics["generation/ref_correct"] <= 1
    (reference,) = (generated / "shared").glob("generations-reference-*.parquet")  # once per sweep
    assert len(pd.read_parquet(reference)) == 16


@pytest.mark.slow
def test_the_report_sets_generation_beside_ranking(generated):
    summary = collect(generated)  # plots and report too
    report = summary["diagnostics"]["generation"]
    assert [a["arm"] for a in report["arms"]] == ["objective=dpo", "objective=simpo"]
    assert report["prompts"] == 8 and set(report["reference"]) >= {"correct", "tokens_mean", "eos_share"}
    for arm in report["arms"]:
        correct = arm["stats"]["correct"]
        assert correct["n"] == 2 and correct["low"] <= correct["mean"] <= correct["high"]  # an interval over 2 seeds
    text = (generated / "report" / "report.md").read_text()
    assert "## Ranking and generation: what each arm writes" in text and "reference (adapter off)" in text


def test_a_reward_model_scores_the_generations(compose_cfg, tmp_path):
    """eval.reward_model: a sequence-classification model (here a tiny random one with the embedded tokenizer)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from ablate.train.embedded import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    overrides = ["eval.prompts=4", "eval.max_new_tokens=6", f"eval.reward_model={tmp_path / 'rm'}"]
    metrics = run_cell(compose_cfg([*TINY, *overrides]), tmp_path / "sweep", overrides)
    rows = pd.read_parquet(next((tmp_path / "sweep" / "cells").iterdir()) / "generations.parquet")
    assert rows.reward.notna().all() and metrics["generation/reward_mean"] == pytest.approx(rows.reward.mean())
    assert "generation/ref_reward_mean" in metrics
