"""Embedded default (ablate/train/embedded.py; ARCHITECTURE.md §7): the verbosity-trap task and the cached tiny Llama.

The model is built once per test session under $ABLATE_CACHE (tests/conftest.py), ~15 s on CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from ablate.train.embedded import FILLER, VOCAB, embedded_model_dir, preferred_mode, verbosity_trap_pairs
from ablate.train.models import add_lora, load_base_model, load_tokenizer

FILLER_WORDS = set(FILLER)


def n_filler(text: str) -> int:
    return sum(word in FILLER_WORDS for word in text.split())


def symbols_of(prompt: str) -> list[str]:
    assert prompt.startswith("echo ")
    return prompt.split()[1:]


# ------------------------------------------------------------------------------------- task
@pytest.mark.parametrize(
    ("symbols", "mode"),
    [
        (["a", "b", "i"], "rev"),  # 2 of 3 in a-h
        (["a", "i", "p"], "copy"),  # 1 of 3
        (["h"], "rev"),
        (["i"], "copy"),
        (["a", "b", "c", "m", "n"], "rev"),  # 3 of 5
        (["a", "b", "m", "n", "o"], "copy"),  # 2 of 5
        (["a", "b", "c", "d", "i", "j", "k"], "rev"),  # 4 of 7
    ],
)
def test_preferred_mode_is_majority_of_a_to_h(symbols, mode):
    assert preferred_mode(symbols) == mode


@pytest.fixture(scope="module")
def data_cfg():
    return OmegaConf.create({"n_train": 2000, "n_heldout_per_slice": 200, "min_symbols": 3, "max_symbols": 7,
                             "filler_fraction": 0.5, "min_filler": 2, "max_filler": 5, "seed": 1234})


@pytest.fixture(scope="module")
def pairs(data_cfg):
    return verbosity_trap_pairs(data_cfg)


def test_answers_follow_the_rule(pairs):
    train, heldout = pairs
    for pair in train + heldout:
        symbols = symbols_of(pair.prompt)
        assert len(symbols) % 2 == 1 and 3 <= len(symbols) <= 7
        good = preferred_mode(symbols)
        bad = "copy" if good == "rev" else "rev"
        body = {"rev": symbols[::-1], "copy": symbols}
        assert pair.chosen.split()[: 2 + len(symbols)] == [good, ":", *body[good]]
        assert pair.rejected.split()[: 2 + len(symbols)] == [bad, ":", *body[bad]]


def test_training_pads_only_chosen(pairs, data_cfg):
    train, _ = pairs
    assert len(train) == 2000
    assert all(p.slice is None for p in train)
    assert all(n_filler(p.rejected) == 0 for p in train)
    padded = [n_filler(p.chosen) for p in train if n_filler(p.chosen)]
    assert all(2 <= n <= 5 for n in padded)
    # Binomial(2000, 0.5): sd of the share = sqrt(0.25/2000) ≈ 0.011; 0.05 is > 4 sd
    assert abs(len(padded) / len(train) - data_cfg.filler_fraction) < 0.05


@pytest.mark.parametrize("fraction", [0.0, 0.2, 1.0])
def test_filler_fraction_is_respected(data_cfg, fraction):
    cfg = OmegaConf.merge(data_cfg, {"n_train": 1000, "n_heldout_per_slice": 10, "filler_fraction": fraction})
    train, _ = verbosity_trap_pairs(cfg)
    share = sum(n_filler(p.chosen) > 0 for p in train) / len(train)
    # sd ≤ sqrt(0.2·0.8/1000) ≈ 0.013
    assert abs(share - fraction) < 0.05


def test_heldout_slices(pairs, data_cfg):
    _, heldout = pairs
    clean = [p for p in heldout if p.slice == "clean"]
    verbose = [p for p in heldout if p.slice == "verbose_rejected"]
    assert len(clean) == len(verbose) == data_cfg.n_heldout_per_slice
    assert len(heldout) == 2 * data_cfg.n_heldout_per_slice
    assert all(n_filler(p.chosen) == 0 and n_filler(p.rejected) == 0 for p in clean)
    assert all(n_filler(p.chosen) == 0 for p in verbose)
    assert all(2 <= n_filler(p.rejected) <= 5 for p in verbose)
    # filler only at the end of the rejected answer, after the full body
    for p in verbose:
        words = p.rejected.split()
        k = len(symbols_of(p.prompt))
        assert len(words) == 2 + k + n_filler(p.rejected)


def test_heldout_prompts_are_unseen_and_distinct(pairs):
    train, heldout = pairs
    train_prompts = {p.prompt for p in train}
    heldout_prompts = [p.prompt for p in heldout]
    assert not train_prompts & set(heldout_prompts)
    assert len(set(heldout_prompts)) == len(heldout_prompts)


def test_pair_ids_are_unique(pairs):
    train, heldout = pairs
    ids = [p.pair_id for p in train + heldout]
    assert len(set(ids)) == len(ids)


def test_same_seed_same_pairs_other_seed_other_pairs(pairs, data_cfg):
    assert verbosity_trap_pairs(data_cfg) == pairs
    other = verbosity_trap_pairs(OmegaConf.merge(data_cfg, {"seed": 4321}))
    assert other[0] != pairs[0]
    assert other[1] != pairs[1]


# ------------------------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def model_cfg(compose_cfg):
    return compose_cfg([]).model


@pytest.fixture(scope="module")
def model_dir(model_cfg):
    return embedded_model_dir(model_cfg)


def test_model_dir_is_cached_and_reused(model_cfg, model_dir, tmp_path_factory):
    import os

    assert str(model_dir).startswith(os.environ["ABLATE_CACHE"])
    assert (model_dir / "config.json").exists() and (model_dir / "ablate_embedded.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    again = embedded_model_dir(model_cfg)
    assert again == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == before
    # no staging directories are left next to it
    assert [p.name for p in model_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_the_default_model_comes_from_the_shipped_weights(model_cfg, tmp_path, monkeypatch):
    """The default config never warms up: its weights ship with the package, the same on every machine."""
    from safetensors.torch import load_file

    from ablate.train import embedded

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "_warm_up", lambda *a: pytest.fail("the default model was warmed up"))
    built = embedded_model_dir(model_cfg)
    assert json.loads((built / "ablate_embedded.json").read_text())["weights"].startswith("shipped")
    shipped, saved = load_file(embedded.SHIPPED_WEIGHTS), load_file(built / "model.safetensors")
    assert shipped.keys() == saved.keys() and all(torch.equal(shipped[k], saved[k]) for k in shipped)


def test_another_model_config_is_warmed_up_here(model_cfg, tmp_path, monkeypatch):
    from ablate.train import embedded

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path))
    built = embedded_model_dir(OmegaConf.merge(model_cfg, {"warmup_steps": 2, "hidden_size": 32,
                                                           "intermediate_size": 64}))
    assert json.loads((built / "ablate_embedded.json").read_text())["weights"].startswith("warmed up here")
    assert embedded._model_key(model_cfg) == embedded.SHIPPED_KEY  # the shipped file is the default's


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="the shipped weights were built with torch's AVX-512 kernels; this CPU's kernels sum in "
                           "another order, and the warm-up amplifies that (ablate/train/embedded.py)")
def test_the_shipped_weights_are_what_the_warm_up_builds(model_cfg):
    """No hidden artifact: warming the default model up here gives the shipped tensors bit for bit."""
    from safetensors.torch import load_file

    from ablate.train import embedded

    tokenizer = embedded.build_tokenizer()
    model = embedded._warm_up(embedded._new_model(model_cfg, tokenizer), tokenizer, model_cfg)
    shipped = load_file(embedded.SHIPPED_WEIGHTS)
    state = model.state_dict()
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)


def test_model_cache_key_follows_config(model_cfg, model_dir):
    from ablate.train.embedded import _model_key

    assert _model_key(model_cfg) != _model_key(OmegaConf.merge(model_cfg, {"hidden_size": 64}))
    assert _model_key(model_cfg) == _model_key(OmegaConf.merge(model_cfg, {"dtype": "bfloat16"}))


def test_tokenizer_and_model_load(model_cfg, model_dir):
    tokenizer = load_tokenizer(model_cfg)
    ids = tokenizer("echo a b c")["input_ids"]
    assert ids == [tokenizer.bos_token_id] + [VOCAB.index(w) for w in ("echo", "a", "b", "c")]
    assert tokenizer.bos_token_id == VOCAB.index("<s>")
    assert tokenizer.eos_token_id == VOCAB.index("</s>")
    assert tokenizer.pad_token_id == VOCAB.index("<pad>")
    assert tokenizer("rev : a b well", add_special_tokens=False)["input_ids"] == [
        VOCAB.index(w) for w in ("rev", ":", "a", "b", "well")
    ]

    model = load_base_model(model_cfg, torch.device("cpu"))
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(VOCAB)
    assert model.config.hidden_size == model_cfg.hidden_size
    assert model.config.num_hidden_layers == model_cfg.num_layers
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(VOCAB))
    assert torch.isfinite(logits).all()


def test_warm_up_taught_the_format(model_cfg, model_dir):
    """After `echo a b c`, the warmed-up model puts most mass on a mode word, not a symbol."""
    tokenizer = load_tokenizer(model_cfg)
    model = load_base_model(model_cfg, torch.device("cpu"))
    ids = tokenizer("echo a b c")["input_ids"]
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    assert probs[VOCAB.index("rev")] + probs[VOCAB.index("copy")] > 0.5


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["q_proj", "v_proj"], {"q_proj", "v_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_add_lora_trains_only_adapters(compose_cfg, model_cfg, model_dir, targets, expected):
    target = "all-linear" if targets == "all-linear" else f"[{','.join(targets)}]"
    lora_cfg = compose_cfg([f"lora.target_modules={target}", "lora.r=4"]).lora
    model = add_lora(load_base_model(model_cfg, torch.device("cpu")), lora_cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all("lora_" in n for n in trainable)
    assert not any("lora_" in n for n in frozen)
    adapted = {n.split(".")[-4] for n in trainable}  # ...<module>.lora_A.default.weight
    assert adapted == expected  # never the LM head or embeddings
    # rank 4: every lora_A is (4, in_features)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            assert param.shape[0] == 4
