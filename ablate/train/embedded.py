"""The embedded default: a tiny Llama and the "verbosity trap" task, built in code (docs/ARCHITECTURE.md §7).

Nothing is downloaded. The model is saved as an ordinary Hugging Face directory (config,
safetensors, tokenizer files) in a cache keyed by its config, so the trainer loads it through the
same code path as any hub model.

The warm-up is chaotic: at its learning rate, float rounding differences grow until two machines
whose kernels sum in another order (torch on AVX-512 vs AVX2) end with visibly different base models,
and LoRA cells trained from them differ by up to 0.3 in held-out accuracy (docs/ARCHITECTURE.md §7).
Training from the SAME base model on either kernel differs by a few pairs. So the default config's
warmed-up weights ship with the package (embedded_warm.safetensors, 1.3 MB, exactly what `_warm_up`
builds with torch's AVX-512 kernels; tests/test_embedded.py rebuilds and compares them where torch
runs those kernels) and are used instead of warming up; any other model config is warmed up here.
Rebuild the file after changing the recipe (and bump EMBEDDED_VERSION):
    python -c "from ablate.train.embedded import write_shipped_weights; write_shipped_weights()"

The task. A prompt is `echo x1 .. xk` with k odd symbols from a-p. An answer is `rev : <reversed>`
or `copy : <copy>`; a hidden rule prefers `rev` when most symbols are in a-h. The warm-up SFT
teaches the format with the mode chosen at random, so the preference data must teach the rule.
In training, half the pairs pad the CHOSEN answer with 2-5 filler words, as real data often has
longer chosen answers. Held-out slices: `clean` (no filler on either side) and `verbose_rejected`
(the rejected answer is the wrong mode plus filler). An objective that learns "filler is good"
instead of the rule fails `verbose_rejected`. This probes length exploitation; it is not a general
claim about which objective is better.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ablate.data.pairs import PreferencePair
from ablate.sweepdir.atomic import build_directory_once

# Bump when the vocabulary, task or warm-up recipe changes: it is part of the cache key.
EMBEDDED_VERSION = 1
# The default config's warmed-up weights, built by _warm_up on AVX-512 kernels (see the module docstring).
SHIPPED_WEIGHTS = Path(__file__).with_name("embedded_warm.safetensors")
SHIPPED_KEY = {"version": 1, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256,
               "warmup_steps": 300, "warmup_lr": 0.003, "warmup_seed": 0}

SYMBOLS = list("abcdefghijklmnop")
REVERSE_SYMBOLS = set("abcdefgh")  # majority of these -> the preferred answer reverses
FILLER = ["well", "so", "um", "like", "basically", "indeed", "actually", "okay"]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
VOCAB = SPECIAL + ["echo", "rev", "copy", ":"] + SYMBOLS + FILLER


def cache_root() -> Path:
    return Path(os.environ.get("ABLATE_CACHE", Path.home() / ".cache" / "ablate"))


# ------------------------------------------------------------------------------------ the task
@dataclass(frozen=True)
class TaskSpec:
    min_symbols: int = 3
    max_symbols: int = 7
    min_filler: int = 2
    max_filler: int = 5


def preferred_mode(symbols: list[str]) -> str:
    return "rev" if sum(s in REVERSE_SYMBOLS for s in symbols) * 2 > len(symbols) else "copy"


def answer(symbols: list[str], mode: str, n_filler: int, rng: random.Random) -> str:
    body = symbols[::-1] if mode == "rev" else symbols
    return " ".join([mode, ":", *body, *(rng.choice(FILLER) for _ in range(n_filler))])


def judge(prompt: str, generated: str) -> dict[str, bool]:
    """Whether a generated answer to `echo x1 .. xk` does what the hidden rule asks: `correct` once filler
    words are ignored (the right mode and symbols), `exact` with no filler at all. What the preference data
    teach, measured on what the model produces rather than on how it ranks two given answers."""
    symbols = prompt.split()[1:]
    mode = preferred_mode(symbols)
    expected = [mode, ":", *(symbols[::-1] if mode == "rev" else symbols)]
    words = generated.split()
    return {"correct": [w for w in words if w not in FILLER] == expected, "exact": words == expected}


def random_symbols(rng: random.Random, spec: TaskSpec) -> list[str]:
    k = rng.choice(range(spec.min_symbols | 1, spec.max_symbols + 1, 2))  # odd: no majority ties
    return [rng.choice(SYMBOLS) for _ in range(k)]


def verbosity_trap_pairs(data_cfg) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training pairs and held-out pairs (slices clean, verbose_rejected) from data_cfg.seed only."""
    spec = TaskSpec(data_cfg.min_symbols, data_cfg.max_symbols, data_cfg.min_filler, data_cfg.max_filler)
    rng = random.Random(data_cfg.seed)

    def pair(pair_id, symbols, chosen_filler, rejected_filler, slice_=None):
        good = preferred_mode(symbols)
        bad = "copy" if good == "rev" else "rev"
        return PreferencePair(
            pair_id=pair_id,
            prompt="echo " + " ".join(symbols),
            chosen=answer(symbols, good, chosen_filler, rng),
            rejected=answer(symbols, bad, rejected_filler, rng),
            slice=slice_,
        )

    def n_filler():
        return rng.randint(spec.min_filler, spec.max_filler)

    train, seen = [], set()
    for i in range(data_cfg.n_train):
        symbols = random_symbols(rng, spec)
        seen.add(tuple(symbols))
        padded = rng.random() < data_cfg.filler_fraction
        train.append(pair(f"train-{i:06d}", symbols, n_filler() if padded else 0, 0))

    heldout = []
    for slice_ in ("clean", "verbose_rejected"):
        for i in range(data_cfg.n_heldout_per_slice):
            symbols = random_symbols(rng, spec)
            while tuple(symbols) in seen:  # held out means unseen prompts
                symbols = random_symbols(rng, spec)
            seen.add(tuple(symbols))
            rejected_filler = n_filler() if slice_ == "verbose_rejected" else 0
            heldout.append(pair(f"{slice_}-{i:05d}", symbols, 0, rejected_filler, slice_))
    return train, heldout


# ----------------------------------------------------------------------------------- the model
def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", VOCAB.index("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _model_key(model_cfg) -> dict:
    keys = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "warmup_steps", "warmup_lr",
            "warmup_seed")
    return {"version": EMBEDDED_VERSION, **{k: model_cfg[k] for k in keys}}


def weights_tag(model_cfg) -> str:
    """Where this config's weights come from: `shipped-<hash of the file>` for the default config, else
    `warmed-up` (on this machine). Part of the cache folder's key and of the reference log-probs' key, so a
    cache or a sweep's shared/ files made from a locally warmed-up model are never taken for the shipped one."""
    if _model_key(model_cfg) == SHIPPED_KEY and SHIPPED_WEIGHTS.exists():
        return "shipped-" + _shipped_digest()
    return "warmed-up"


@functools.cache
def _shipped_digest() -> str:
    """The shipped file's hash, read once per process (every cell asks for it several times)."""
    return hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()[:16]


def embedded_model_dir(model_cfg) -> Path:
    """The cached warmed-up model for this config; built on first use (tens of seconds, once)."""
    key = _model_key(model_cfg)
    tag = weights_tag(model_cfg)
    digest = hashlib.sha256(json.dumps(key | {"weights": tag}, sort_keys=True).encode()).hexdigest()[:16]

    def build(staging: Path) -> None:
        tokenizer = build_tokenizer()
        model = _new_model(model_cfg, tokenizer)
        if tag.startswith("shipped"):
            from safetensors.torch import load_file

            missing, unexpected = model.load_state_dict(load_file(SHIPPED_WEIGHTS), strict=False)
            if unexpected or missing != ["lm_head.weight"]:  # the LM head is tied to the embeddings
                raise RuntimeError(f"{SHIPPED_WEIGHTS} does not fit the embedded model: missing {missing}, "
                                   f"unexpected {unexpected}")
            model.eval()
            origin = f"shipped: {SHIPPED_WEIGHTS.name}"
        else:
            model = _warm_up(model, tokenizer, model_cfg)
            origin = f"warmed up here (torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()} kernels)"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "ablate_embedded.json").write_text(json.dumps(key | {"weights": origin}, indent=2) + "\n")

    return build_directory_once(cache_root() / "embedded" / digest, build, done="config.json")


def write_shipped_weights() -> Path:
    """Warm the default config's model up here and write it as the shipped weights (maintainers only)."""
    from safetensors.torch import save_file

    tokenizer = build_tokenizer()
    cfg = SimpleNamespace(**{k: v for k, v in SHIPPED_KEY.items() if k != "version"})
    model = _warm_up(_new_model(cfg, tokenizer), tokenizer, cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, SHIPPED_WEIGHTS, metadata={"format": "pt"})
    return SHIPPED_WEIGHTS


def _new_model(model_cfg, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(model_cfg.warmup_seed)
    return LlamaForCausalLM(config)


def _warm_up(model, tokenizer, model_cfg):
    """Short SFT on the task's FORMAT: random mode, sometimes filler, so no preference is learned."""
    from ablate.progress import track

    rng = random.Random(model_cfg.warmup_seed)
    spec = TaskSpec()
    opt = torch.optim.AdamW(model.parameters(), lr=model_cfg.warmup_lr)
    model.train()
    for _ in track(range(model_cfg.warmup_steps), desc="warming up the embedded model"):
        prompts, completions = [], []
        for _ in range(64):
            symbols = random_symbols(rng, spec)
            n_filler = rng.randint(spec.min_filler, spec.max_filler) if rng.random() < 0.25 else 0
            prompts.append("echo " + " ".join(symbols))
            completions.append(answer(symbols, rng.choice(["rev", "copy"]), n_filler, rng))
        input_ids, labels = _sft_batch(tokenizer, prompts, completions)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _sft_batch(tokenizer, prompts, completions):
    prompt_ids = tokenizer(prompts)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    seqs = [p + c + [tokenizer.eos_token_id] for p, c in zip(prompt_ids, completion_ids, strict=False)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)  # loss on the completion (and EOS) only
    for i, (p, s) in enumerate(zip(prompt_ids, seqs, strict=False)):
        input_ids[i, : len(s)] = torch.tensor(s)
        labels[i, len(p) : len(s)] = torch.tensor(s[len(p) :])
    return input_ids, labels

