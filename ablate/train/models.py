"""The base causal LM and its LoRA adapter.

One loader for every source: the embedded model and a GGUF file are first materialised as a local
Hugging Face directory, then loaded exactly like a hub id or a user's local directory.
"""

from __future__ import annotations

import warnings

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def model_path(model_cfg) -> str:
    if model_cfg.kind == "embedded":
        from ablate.train.embedded import embedded_model_dir

        return str(embedded_model_dir(model_cfg))
    if model_cfg.get("gguf_file"):  # dequantised once into ablate's cache (ablate/train/gguf.py)
        from ablate.train.gguf import gguf_model_dir

        return str(gguf_model_dir(model_cfg))
    return model_cfg.path


def _revision(model_cfg) -> str | None:
    """The hub revision, for a model read from the hub; a converted GGUF directory is local."""
    return None if model_cfg.get("gguf_file") else model_cfg.get("revision")


def load_tokenizer(model_cfg):
    if model_cfg.kind == "embedded":
        # Built in code, identical to the one saved beside the model: the launcher tokenises the data at
        # planning time without building (and warming up) the model first.
        from ablate.train.embedded import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_path(model_cfg),
        revision=_revision(model_cfg),
        trust_remote_code=model_cfg.get("trust_remote_code", False),
    )
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_cfg, device: torch.device, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-cell "Loading weights" bar drowns the training bars

    model = AutoModelForCausalLM.from_pretrained(
        model_path(model_cfg),
        revision=_revision(model_cfg),
        trust_remote_code=model_cfg.get("trust_remote_code", False),
        dtype=DTYPES[model_cfg.dtype],
        attn_implementation=attn_implementation,  # sdpa; flash_attention_2 when installed
    )
    model.config.use_cache = False  # training and scoring never generate
    return model.to(device)


def add_lora(model, lora_cfg):
    """Wrap `model` with a fresh LoRA adapter; the base weights are frozen by peft."""
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    targets = lora_cfg.target_modules
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets if isinstance(targets, str) else list(OmegaConf.to_container(targets)),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
