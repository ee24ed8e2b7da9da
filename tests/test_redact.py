"""Secrets never reach a file: the text ablate records (sweep.json's command, W&B warnings) is redacted."""

from __future__ import annotations

import json
import sys

import pytest

from ablate.redact import redact
from ablate.sweep.plan import write_sweep_json


@pytest.mark.parametrize("text, expected", [
    ("setup=[export WANDB_API_KEY=abc123] seed=1", "setup=[export WANDB_API_KEY=***] seed=1"),
    ("HF_TOKEN=hf_xyz --hub-token hf_abc api_key: k", "HF_TOKEN=*** --hub-token *** api_key: ***"),
    ("x.password='p w' y", "x.password=*** y"),
    # names that merely contain a secret's word, and prose, are left alone
    ("chosen_tokens=5 data.max_prompt_length=16 the token is missing", None),
])
def test_redact_masks_secret_assignments(text, expected):
    assert redact(text) == (expected or text)


def test_redact_masks_secret_environment_values_anywhere(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "t0ken-value-123")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to be told from ordinary text
    assert redact(f"url=https://x/{'k' * 40}/y auth t0ken-value-123 abc") == "url=https://x/***/y auth *** abc"


def test_sweep_json_records_the_command_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s" * 40)
    monkeypatch.setattr(sys, "argv", ["ablate", "-m", "objective=dpo,simpo", f"+note={'s' * 40}",
                                      "'hydra.launcher.setup=[export HF_TOKEN=hf_abcdef]'"])
    write_sweep_json(tmp_path, [], launcher="local")
    text = (tmp_path / "sweep.json").read_text()
    assert "s" * 40 not in text and "hf_abcdef" not in text
    assert json.loads(text)["command"] == ("ablate -m objective=dpo,simpo +note=*** "
                                           "'hydra.launcher.setup=[export HF_TOKEN=***]'")
