"""ablate/train/models.py through the hub path (model=hub model.path=<local dir>), with no download.

A tiny random Llama is saved with the embedded word-level tokenizer as an ordinary Hugging Face
directory, then loaded exactly as a user's local model would be.
"""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ablate.sweep.run import run_cell
from ablate.train.embedded import VOCAB, build_tokenizer, verbosity_trap_pairs
from ablate.train.models import add_lora, load_base_model, load_tokenizer

N_LAYERS = 2
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A saved tiny Llama (float32 weights) + the embedded tokenizer, as from save_pretrained."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = build_tokenizer()
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir_without_pad(tmp_path_factory):
    """The same model, but its tokenizer has no pad token (like Llama / GPT-2 tokenizers)."""
    path = tmp_path_factory.mktemp("tiny_llama_no_pad")
    full = build_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=full.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tiny_llama(full).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def hub_model_cfg(compose_cfg, path, *extra):
    return compose_cfg(["model=hub", f"model.path='{path}'", *extra]).model


def lora_modules(model) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


# ------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_loads_from_local_dir(compose_cfg, llama_dir):
    tokenizer = load_tokenizer(hub_model_cfg(compose_cfg, llama_dir))
    reference = build_tokenizer()
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>" and tokenizer.bos_token == "<s>"
    assert tokenizer("echo a b")["input_ids"] == reference("echo a b")["input_ids"]


def test_tokenizer_without_pad_gets_eos_as_pad(compose_cfg, llama_dir_without_pad):
    assert AutoTokenizer.from_pretrained(llama_dir_without_pad).pad_token_id is None  # the premise
    tokenizer = load_tokenizer(hub_model_cfg(compose_cfg, llama_dir_without_pad))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == VOCAB.index("</s>")


# ---------------------------------------------------------------------------------------- model
@pytest.mark.parametrize(("dtype", "torch_dtype"), [("bfloat16", torch.bfloat16), ("float32", torch.float32)])
def test_base_model_dtype(compose_cfg, llama_dir, dtype, torch_dtype):
    model = load_base_model(hub_model_cfg(compose_cfg, llama_dir, f"model.dtype={dtype}"), torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch_dtype}
    assert model.config.use_cache is False
    assert model.config.vocab_size == len(VOCAB)


def test_default_hub_dtype_is_bfloat16(compose_cfg, llama_dir):
    model = load_base_model(hub_model_cfg(compose_cfg, llama_dir), torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_lora_targets_q_v_by_default_and_every_linear_layer_with_all_linear(compose_cfg, llama_dir):
    cpu = torch.device("cpu")
    qv_cfg = compose_cfg(["model=hub", f"model.path='{llama_dir}'", "model.dtype=float32"])
    all_cfg = compose_cfg(["model=hub", f"model.path='{llama_dir}'", "model.dtype=float32",
                           "lora.target_modules=all-linear", "lora.r=4"])
    assert list(qv_cfg.lora.target_modules) == ["q_proj", "v_proj"]

    qv = add_lora(load_base_model(qv_cfg.model, cpu), qv_cfg.lora)
    every = add_lora(load_base_model(all_cfg.model, cpu), all_cfg.lora)

    qv_names, all_names = lora_modules(qv), lora_modules(every)
    assert len(qv_names) == 2 * N_LAYERS
    assert {n.rsplit(".", 1)[-1] for n in qv_names} == {"q_proj", "v_proj"}
    assert len(all_names) == len(LLAMA_LINEAR) * N_LAYERS > len(qv_names)
    assert {n.rsplit(".", 1)[-1] for n in all_names} == set(LLAMA_LINEAR)  # never the LM head
    assert every.peft_config["default"].r == 4

    # Only the adapter trains; LoRA B starts at zero, so the wrapped model is the base model at first.
    trainable = [n for n, p in every.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.count_nonzero(p) == 0 for n, p in every.named_parameters() if "lora_B" in n)


def test_lora_on_bfloat16_model_keeps_bfloat16_base(compose_cfg, llama_dir):
    cfg = compose_cfg(["model=hub", f"model.path='{llama_dir}'", "model.dtype=bfloat16"])
    model = add_lora(load_base_model(cfg.model, torch.device("cpu")), cfg.lora)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    ids = torch.tensor([[VOCAB.index("<s>"), VOCAB.index("echo"), VOCAB.index("a")]])
    assert torch.isfinite(model(input_ids=ids).logits.float()).all()


# ------------------------------------------------------------------------------- training cell
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_cell_with_local_hub_model_and_files(compose_cfg, tiny_overrides, llama_dir, tmp_path,
                                                      monkeypatch, dtype):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    train, heldout = verbosity_trap_pairs(compose_cfg(tiny_overrides).data)
    train_file, heldout_file = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train_file.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                                  for p in train))
    heldout_file.write_text("".join(json.dumps({"id": p.pair_id, "prompt": p.prompt, "chosen": p.chosen,
                                                "rejected": p.rejected, "slice": p.slice}) + "\n" for p in heldout))
    overrides = [
        "model=hub", f"model.path='{llama_dir}'", f"model.dtype={dtype}",
        "data=files", f"data.train_files=['{train_file}']", f"data.heldout_files=['{heldout_file}']",
        "data.max_length=64", "data.max_prompt_length=16",
        *[o for o in tiny_overrides if not o.startswith("data.")],
    ]  # fmt: skip
    cfg = compose_cfg(overrides)
    metrics = run_cell(cfg, tmp_path / "sweep", overrides)

    cell_dirs = list((tmp_path / "sweep" / "cells").iterdir())
    assert len(cell_dirs) == 1
    assert json.loads((cell_dirs[0] / "status.json").read_text())["state"] == "done"
    assert metrics["step"] == 6
    assert metrics["heldout/pairs"] == len(heldout)
    assert metrics["heldout/clean/pairs"] == metrics["heldout/verbose_rejected/pairs"] == len(heldout) // 2
    assert all(math.isfinite(v) for v in metrics.values())
    train_log = [json.loads(line) for line in (cell_dirs[0] / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in train_log] == [2, 4, 6]
    assert all(math.isfinite(v) for e in train_log for v in e.values())
