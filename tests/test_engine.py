"""Precision and memory options (ablate/train/engine.py) and the invariances the trainer owes them:
gradient accumulation 1x8 == 8x1, checkpointing on/off and bf16 autocast with float32 adapters."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf
from test_lean_logps import PAD, pairs, tiny_llama, with_lora  # noqa: F401  (pairs is a fixture)
from torch.testing import assert_close

from ablate.sweep.run import run_cell
from ablate.train.engine import (
    adapter_weights_in_float32,
    autocast_dtype,
    compute_context,
    enable_gradient_checkpointing,
)
from ablate.train.scoring import completion_logps, pair_batch


def test_autocast_auto_is_bf16_only_on_cuda_for_a_bf16_model():
    auto = OmegaConf.create({"autocast": "auto"})
    assert autocast_dtype(auto, torch.device("cpu"), torch.bfloat16) is None
    assert autocast_dtype(auto, torch.device("cuda"), torch.float32) is None
    assert autocast_dtype(auto, torch.device("cuda"), torch.bfloat16) is torch.bfloat16
    assert autocast_dtype(OmegaConf.create({"autocast": "bf16"}), torch.device("cpu"), torch.float32) is torch.bfloat16
    assert autocast_dtype(OmegaConf.create({"autocast": "off"}), torch.device("cuda"), torch.bfloat16) is None


def test_bf16_base_with_float32_adapter_under_autocast(pairs):  # noqa: F811
    """bf16 base weights, fp32 LoRA weights, gradients and AdamW state; matmuls in bf16 (on CPU here)."""
    reference = with_lora(tiny_llama())
    batch = pair_batch(pairs, [0, 1, 2, 3], PAD)
    with torch.no_grad():
        exact, _ = completion_logps(reference, batch)
    model = with_lora(tiny_llama().to(torch.bfloat16))
    params = adapter_weights_in_float32(model)
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    with compute_context(torch.device("cpu"), torch.bfloat16):
        logps, _ = completion_logps(model, batch)
    assert logps.dtype == torch.float32
    assert_close(logps.detach(), exact, rtol=5e-2, atol=0.2)  # bf16 rounding, not a different model
    logps.sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
    optimizer.step()
    state = optimizer.state[params[0]]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_gradient_checkpointing_recomputes_layers_and_changes_no_gradient(pairs):  # noqa: F811
    batch = pair_batch(pairs, [0, 1, 2, 3], PAD)
    grads, calls = [], []
    for checkpointing in (False, True):
        base = tiny_llama()
        if checkpointing:
            enable_gradient_checkpointing(base)
        model = with_lora(base).train()
        count = [0]
        # a pre-hook inside the layer: the recomputation stops early once it has what backward needs
        attention = model.get_base_model().model.layers[0].self_attn
        attention.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        logps, _ = completion_logps(model, batch)
        logps.sum().backward()
        calls.append(count[0])
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert calls == [1, 2]  # with checkpointing, layer 0 runs again in backward
    for name, g in grads[0].items():
        assert_close(grads[1][name], g, atol=1e-6, rtol=1e-6, msg=name)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_accumulation_and_checkpointing_change_no_metric(compose_cfg, tmp_path):
    """One cell three ways: batch 8 in one micro-batch, in 8 micro-batches of 1, and with
    gradient checkpointing. Same pairs, same summed gradients: metrics equal to float tolerance."""
    base = [*TINY, "objective=dpo", "threads=1", "lora.dropout=0.0"]
    plain = run_cell(compose_cfg(base), tmp_path / "plain")
    accumulated = run_cell(compose_cfg([*base, "trainer.grad_accum=8"]), tmp_path / "accumulated")
    checkpointed = run_cell(compose_cfg([*base, "engine.gradient_checkpointing=true"]), tmp_path / "checkpointed")
    for key, value in plain.items():
        assert accumulated[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        assert checkpointed[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    logs = [read_jsonl(next((tmp_path / d / "cells").iterdir()) / "train_log.jsonl")
            for d in ("plain", "accumulated", "checkpointed")]
    for a, b, c in zip(*logs, strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
            assert c[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("override, message", [
    ("engine.autocast=fp8", "engine.autocast = fp8: must be auto or bf16 or fp16 or off"),
    ("engine.attn_implementation=fast", "engine.attn_implementation = fast: must be sdpa or eager"),
    ("engine.head_chunk=0", "engine.head_chunk = 0: must be >= 1"),
    ("engine.eval_batch_tokens=0", "engine.eval_batch_tokens = 0: must be >= 1"),
])
def test_bad_engine_settings_are_refused_before_anything_runs(compose_cfg, override, message):
    from ablate.config import ConfigError, validate_cell

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_cell(compose_cfg([override]), [override])
