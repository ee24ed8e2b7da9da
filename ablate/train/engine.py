"""How a cell computes: precision, activation checkpointing and the attention kernel, in one place.

None of this changes what is computed beyond float rounding, so its settings (`engine.*`) are not
part of a cell's id. Where each dtype lives with `engine.autocast=bf16` (the default on CUDA for a
bfloat16 base model):

    base weights (frozen)       model.dtype (bfloat16 for hub models)
    LoRA A/B weights            float32  (cast explicitly: peft's upcasting is a default, not a contract)
    their gradients, AdamW m/v  float32  (same dtype as the weights)
    matmuls in forward/backward bfloat16 under torch.autocast
    LM-head logits per chunk    float32  before log-softmax (ablate.train.scoring)
    summed log-probs, losses    float32

With autocast off (the default on CPU, and for a float32 model) everything runs in model.dtype
except the LoRA weights, which stay float32.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

AUTOCAST = ("auto", "bf16", "fp16", "off")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def autocast_dtype(engine_cfg, device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype for this cell, or None for none. `auto`: bf16 on CUDA when the base model
    is already bfloat16 (the user chose bf16 numerics); otherwise off, so a CPU or float32 cell is
    computed exactly as without autocast."""
    choice = engine_cfg.autocast
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" and model_dtype == torch.bfloat16 else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice]


def prepare(model, engine_cfg, device: torch.device) -> torch.dtype | None:
    """Apply the engine settings to a freshly loaded base model; return the autocast dtype (or None)."""
    if engine_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return autocast_dtype(engine_cfg, device, model.dtype)


def compute_context(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context per forward (torch.autocast objects are single-use)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works with frozen
    inputs, keyword arguments and LoRA dropout's RNG). Call on the base model before peft wraps it.

    enable_input_require_grads makes the embedding output require grad although peft froze the
    embedding; the reentrant variant needs it, and it keeps the graph connected should a model's
    checkpointing wrapper fall back to reentrant.
    """
    with warnings.catch_warnings():  # transformers 5.x deprecation inside its own helper
        warnings.filterwarnings("ignore", category=FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def adapter_weights_in_float32(model) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters, cast to float32 in place; the optimiser state follows them."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params
