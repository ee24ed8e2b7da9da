"""Config schemas (types live here, values in conf/*.yaml) and the range checks run on every cell.

The dataclasses are registered in Hydra's ConfigStore; each YAML file in conf/ pulls its schema in
through its defaults list. A typo (`lora.rank`), a wrong type (`objective.beta=abc`) or another
objective's key (`objective.gamma` with dpo) is then rejected when Hydra composes the config.
Range checks (β > 0, r ≥ 1, …) cannot be expressed as types: `validate_cell` runs them, and the
launcher calls it for every cell of a sweep before the first one trains.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ablate.data.pairs import CANONICAL_COLUMNS
from ablate.paths import CONF_DIR
from ablate.sweepdir.ids import as_plain
from ablate.train.engine import ATTENTION, AUTOCAST
from ablate.train.models import DTYPES
from ablate.train.objectives import F_DIVERGENCES, OBJECTIVES, register_objective_schemas, term_problems


# ------------------------------------------------------------------------------------- groups
@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0  # peft's lora_alpha; the update is scaled by alpha / r
    dropout: float = 0.0
    # module names (e.g. [q_proj, v_proj]) or "all-linear" (every linear layer but the LM head)
    target_modules: Any = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class EmbeddedModelConfig:
    """The tiny Llama-architecture model built in code (docs/ARCHITECTURE.md §7); no download ever."""

    kind: str = "embedded"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    warmup_steps: int = 300  # SFT steps that teach the task's format (not its preference rule)
    warmup_lr: float = 3e-3
    warmup_seed: int = 0
    dtype: str = "float32"


@dataclass
class HubModelConfig:
    """Any causal LM: a Hugging Face hub id or a local directory in the same format."""

    kind: str = "hub"
    path: str = "???"
    revision: str | None = None
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16 | auto
    trust_remote_code: bool = False  # off unless asked: it runs code from the model repo
    gguf_file: str | None = None  # a GGUF file in `path` (or `pkg:<package>`), dequantised once (ablate/train/gguf.py)


@dataclass
class DataLimits:
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # prompts longer than this are cut from the left
    max_train_pairs: int | None = None
    max_heldout_pairs: int | None = None
    # Tuned sweeps (README "Tuned comparisons"): split the held-out pairs once, by split_seed, into
    # this many validation pairs and test_pairs test pairs (null: the rest). null: no split (default).
    validation_pairs: int | None = None
    test_pairs: int | None = None


@dataclass
class VerbosityTrapDataConfig(DataLimits):
    """The embedded task (docs/ARCHITECTURE.md §7): echo a sequence, reversed or copied by a hidden rule."""

    kind: str = "verbosity_trap"
    n_train: int = 2400
    n_heldout_per_slice: int = 300
    min_symbols: int = 3
    max_symbols: int = 7
    filler_fraction: float = 0.5  # share of training pairs whose CHOSEN answer is padded
    min_filler: int = 2
    max_filler: int = 5
    seed: int = 1234  # the data, including the held-out pairs, never depend on the cell's seed
    split_seed: int = 0  # validation/test split of the held-out pairs (used only with validation_pairs)


@dataclass
class RowOptions(DataLimits):
    """How rows of files or hub splits become pairs, and what bad or leaking data may pass (ablate/data/pairs.py)."""

    # auto | explicit | implicit_prompt (HH-RLHF transcripts without a prompt column) | unpaired (KTO rows)
    format: str = "auto"
    # canonical name -> this source's column, e.g. {prompt: question, chosen: good, rejected: bad}; an open
    # mapping by design (its keys are checked against the canonical names, not a schema)
    columns: Any = None
    assistant_marker: str = "\n\nAssistant:"  # implicit prompt: the prompt ends at the last one of these
    human_marker: str = "\n\nHuman:"  # with a chat template, a transcript prompt's user turns start here
    on_bad_row: str = "error"  # error: stop at the first bad row; skip: drop bad rows, counted by reason
    max_bad_fraction: float = 0.05  # with skip: refuse to run when a larger share of the rows is bad
    max_overlap: float = 0.0  # share of held-out pairs whose prompt may also be a training prompt


@dataclass
class FileDataConfig(RowOptions):
    """Local JSONL / JSON / Parquet files with columns prompt, chosen, rejected [, slice, id]."""

    kind: str = "files"
    train_files: list[str] = field(default_factory=list)
    heldout_files: list[str] = field(default_factory=list)  # empty: split off heldout_fraction
    heldout_fraction: float = 0.1
    split_seed: int = 0


@dataclass
class HubDataConfig(RowOptions):
    """A Hugging Face dataset id (or a local dataset directory) and its splits."""

    kind: str = "hub"
    path: str = "???"
    name: str | None = None
    revision: str | None = None
    train_split: str = "train"
    heldout_split: str | None = "test"  # null: split off heldout_fraction of train_split
    heldout_fraction: float = 0.1
    split_seed: int = 0


@dataclass
class TrainerConfig:
    max_steps: int = 150
    batch_size: int = 16  # pairs per optimiser step (examples, on unpaired KTO data)
    grad_accum: int = 1  # micro-batches per step; each holds batch_size / grad_accum of them
    lr: float = 4e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # linear warm-up over this share of steps, then cosine to 0
    max_grad_norm: float = 1.0
    eval_every: int = 50
    eval_batch_size: int = 128
    log_every: int = 10
    # Batches of similar pair lengths (less padding); off by default: on, it changes which pairs form a
    # batch, so a cell with it is a different cell (ablate/train/data_order.py)
    group_by_length: bool = False
    # Minutes of training between periodic checkpoints (the step-boundary checkpoint preemption writes), so a
    # cell killed without warning (SIGKILL, OOM, node failure) resumes from the newest one. null: every 30
    # minutes inside a SLURM job, off elsewhere; 0: off. Changes nothing a cell computes: not in the cell id.
    checkpoint_every: float | None = None


@dataclass
class EngineConfig:
    """How a cell computes, not what: speed and memory only, so not part of the cell id (ablate/train/engine.py)."""

    head_chunk: int = 1024  # LM-head rows per chunk of the lean log-prob path (memory ~ 4 x chunk x vocab x 4 B)
    eval_batch_tokens: int = 16384  # padded tokens per no-grad scoring batch (at most trainer.eval_batch_size pairs)
    autocast: str = "auto"  # auto | bf16 | fp16 | off; auto = bf16 on CUDA for a bfloat16 model, else off
    gradient_checkpointing: bool = False  # recompute decoder activations in backward (non-reentrant)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | flash_attention_3 | flex_attention
    parallel: str = "ddp"  # several tasks per cell: ddp (replicated model) | fsdp (sharded); ignored with one


@dataclass
class LoggerConfig:
    kind: str = "none"


@dataclass
class WandbLoggerConfig:
    kind: str = "wandb"
    project: str = "ablate"
    entity: str | None = None
    group: str | None = None  # null: the sweep directory's name
    mode: str | None = None  # null: W&B's default (WANDB_MODE, else online); online; offline; disabled
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 60.0  # seconds to wait for W&B's server before logging offline instead
    finish_timeout: float = 300.0  # seconds a finishing run waits for uploads; the rest stays on disk for `wandb sync`


@dataclass
class EvalConfig:
    """What a cell's model generates at its end (ablate/train/generation.py); not part of the cell id: it changes
    nothing a cell trains, only what is measured after."""

    generate: bool | None = None  # null: on for the embedded example (model.kind=embedded), off otherwise
    prompts: int = 32  # held-out prompts generated for, the same sample in every cell (eval.seed)
    max_new_tokens: int = 32
    samples: int = 0  # sampled generations per prompt beside the greedy one
    temperature: float = 1.0  # for the sampled ones
    seed: int = 0  # the prompt sample and the sampling seed: never the cell's seed
    reward_model: str | None = None  # a sequence-classification model (hub id or dir) scoring prompt + generation


@dataclass
class SelectConfig:
    """The collector's decision rule (docs/ARCHITECTURE.md §6); documented in conf/select/default.yaml."""

    metric: str = "avglogp_accuracy"
    slice: str | None = None
    factor: str = "objective"
    alpha: float = 0.05
    min_seeds: int = 3
    min_extra_pairs: int = 10
    min_margin_gain: float = 0.0
    equivalence_margin: float | None = 0.03
    power: float = 0.8
    min_effect: float = 0.0
    prefer_lower_rank: bool = True
    overoptimisation_tolerance: float = 0.0
    length_imbalance: float = 0.2
    collapse_gap: float = 0.2  # a seed this far below its arm's median (decision metric) counts as collapsed
    failed_cells: str = "undetermined"  # undetermined | worst: what a failed seed of a compared arm does
    max_seeds: int = 6  # the seeds per arm over which the primary test spends alpha across looks


SELECT_DEFAULTS = CONF_DIR / "select" / "default.yaml"


def select_config(overrides: list[str] | tuple[str, ...] = (), base: DictConfig | None = None) -> DictConfig:
    """conf/select/default.yaml (or `base`) with `key=value` overrides, checked against the schema."""
    schema = OmegaConf.structured(SelectConfig)
    if base is None:
        defaults = OmegaConf.load(SELECT_DEFAULTS)
        defaults.pop("defaults", None)
        base = OmegaConf.merge(schema, defaults)
    else:
        # a rule recorded by an older version (sweep.json, a queued collector job) may name retired keys
        known = {k: v for k, v in OmegaConf.to_container(base).items() if k in schema}
        base = OmegaConf.merge(schema, known)
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


@dataclass
class AblateConfig:
    objective: Any = "???"
    lora: LoraConfig = field(default_factory=LoraConfig)
    model: Any = "???"
    data: Any = "???"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = "???"
    select: SelectConfig = field(default_factory=SelectConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N — not part of the cell id
    threads: int | None = None  # torch CPU threads; null keeps torch's default


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=AblateConfig)
    cs.store(group="lora", name="schema", node=LoraConfig)
    cs.store(group="model", name="schema_embedded", node=EmbeddedModelConfig)
    cs.store(group="model", name="schema_hub", node=HubModelConfig)
    cs.store(group="data", name="schema_verbosity_trap", node=VerbosityTrapDataConfig)
    cs.store(group="data", name="schema_files", node=FileDataConfig)
    cs.store(group="data", name="schema_hub", node=HubDataConfig)
    cs.store(group="trainer", name="schema", node=TrainerConfig)
    cs.store(group="logger", name="schema", node=LoggerConfig)
    cs.store(group="logger", name="schema_wandb", node=WandbLoggerConfig)
    cs.store(group="select", name="schema", node=SelectConfig)
    register_objective_schemas(cs)


# ------------------------------------------------------------------------------ range checks
class ConfigError(ValueError):
    """A config that composes but cannot run; raised before any cell of the sweep trains."""


def _positive(x):
    return x > 0


def _non_negative(x):
    return x >= 0


# Objective hyper-parameters are checked by name, so a new objective reusing a name is covered;
# tests/test_config.py fails when an objective introduces a name missing here.
OBJECTIVE_PARAMETER_RULES = {
    "beta": (_positive, "> 0"),
    "tau": (_positive, "> 0"),
    "delta": (_positive, "> 0"),
    "gamma": (_non_negative, ">= 0"),
    "label_smoothing": (lambda x: 0 <= x < 0.5, "in [0, 0.5)"),
    "nll_weight": (_non_negative, ">= 0"),
    "odds_ratio_weight": (_positive, "> 0"),
    "desirable_weight": (_positive, "> 0"),
    "undesirable_weight": (_positive, "> 0"),
    "terms": (lambda x: isinstance(x, list) and len(x) > 0, "a non-empty list"),  # each term: term_problems
    "divergence": (lambda x: x in F_DIVERGENCES, f"one of {', '.join(F_DIVERGENCES)}"),
    "alpha": (lambda x: True, "a number"),  # fdpo: any real α (1: reverse KL); alphapo: 0 is SimPO
    "ld_alpha": (lambda x: 0 <= x <= 1, "in [0, 1] (1: DPO; 0: the tokens past the shared length dropped)"),
}

# (objective, parameter) -> a rule of its own, where the shared one above is not enough
OBJECTIVE_SPECIFIC_RULES = {
    ("exo_pair", "label_smoothing"): (lambda x: 0 < x < 0.5, "in (0, 0.5): EXO takes log(label_smoothing)"),
}


def objective_rule(objective: str, param: str) -> tuple:
    return OBJECTIVE_SPECIFIC_RULES.get((objective, param), OBJECTIVE_PARAMETER_RULES[param])


RULES = {
    "lora.r": (lambda x: x >= 1, ">= 1"),
    "lora.alpha": (_positive, "> 0"),
    "lora.dropout": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "trainer.max_steps": (lambda x: x >= 1, ">= 1"),
    "trainer.batch_size": (lambda x: x >= 1, ">= 1"),
    "trainer.grad_accum": (lambda x: x >= 1, ">= 1"),
    "trainer.lr": (_positive, "> 0"),
    "trainer.weight_decay": (_non_negative, ">= 0"),
    "trainer.warmup_ratio": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "trainer.max_grad_norm": (_positive, "> 0"),
    "trainer.eval_every": (lambda x: x >= 1, ">= 1"),
    "trainer.eval_batch_size": (lambda x: x >= 1, ">= 1"),
    "trainer.log_every": (lambda x: x >= 1, ">= 1"),
    "trainer.checkpoint_every": (_non_negative, ">= 0 minutes (0: off; null: 30 in a SLURM job, else off)"),
    "engine.head_chunk": (lambda x: x >= 1, ">= 1"),
    "eval.prompts": (lambda x: x >= 1, ">= 1"),
    "eval.max_new_tokens": (lambda x: x >= 1, ">= 1"),
    "eval.samples": (_non_negative, ">= 0"),
    "eval.temperature": (_positive, "> 0"),
    "engine.eval_batch_tokens": (lambda x: x >= 1, ">= 1"),
    "engine.autocast": (lambda x: x in AUTOCAST, " or ".join(AUTOCAST)),
    "engine.attn_implementation": (lambda x: x in ATTENTION, " or ".join(ATTENTION)),
    "engine.parallel": (lambda x: x in ("ddp", "fsdp"), "ddp or fsdp"),
    "data.max_length": (lambda x: x >= 2, ">= 2"),
    "data.max_prompt_length": (lambda x: x >= 1, ">= 1"),
    "data.heldout_fraction": (lambda x: 0 < x < 1, "in (0, 1)"),
    "data.filler_fraction": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "data.n_train": (lambda x: x >= 1, ">= 1"),
    "data.n_heldout_per_slice": (lambda x: x >= 1, ">= 1"),
    "data.max_train_pairs": (lambda x: x >= 1, ">= 1 (or null: all of them)"),
    "data.max_heldout_pairs": (lambda x: x >= 1, ">= 1 (or null: all of them)"),
    "data.min_symbols": (lambda x: x >= 1, ">= 1"),
    "data.min_filler": (_non_negative, ">= 0"),
    "data.max_bad_fraction": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "data.max_overlap": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "data.on_bad_row": (lambda x: x in ("error", "skip"), "error or skip"),
    "data.format": (lambda x: x in ("auto", "explicit", "implicit_prompt", "unpaired"),
                    "auto, explicit, implicit_prompt or unpaired"),
    "data.assistant_marker": (lambda x: bool(x.strip()), "a non-empty marker"),
    "data.human_marker": (lambda x: bool(x.strip()), "a non-empty marker"),
    "data.validation_pairs": (lambda x: x >= 1, ">= 1 (or null: no validation/test split)"),
    "data.test_pairs": (lambda x: x >= 1, ">= 1 (or null: every held-out pair not used for validation)"),
    "model.hidden_size": (lambda x: x >= 1, ">= 1"),
    "model.num_layers": (lambda x: x >= 1, ">= 1"),
    "model.num_heads": (lambda x: x >= 1, ">= 1"),
    "model.intermediate_size": (lambda x: x >= 1, ">= 1"),
    "model.warmup_steps": (_non_negative, ">= 0"),
    "model.warmup_lr": (_positive, "> 0"),
    "threads": (lambda x: x >= 1, ">= 1 (or null: torch's default)"),
    "logger.mode": (lambda x: x in ("online", "offline", "disabled"), "online, offline, disabled or null"),
    "logger.init_timeout": (_positive, "> 0"),
    "logger.finish_timeout": (_positive, "> 0"),
}

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# The schema of every group of a cell, to reject keys forced in with `+group.key=...` (Hydra accepts
# those on a structured config). Groups with several schemas are told apart by their `kind`.
GROUP_SCHEMAS = {
    "lora": {None: LoraConfig},
    "trainer": {None: TrainerConfig},
    "select": {None: SelectConfig},
    "model": {"embedded": EmbeddedModelConfig, "hub": HubModelConfig},
    "data": {"verbosity_trap": VerbosityTrapDataConfig, "files": FileDataConfig, "hub": HubDataConfig},
    "logger": {"none": LoggerConfig, "wandb": WandbLoggerConfig},
}


def _unknown_keys(cfg: dict) -> list[str]:
    """Keys no schema declares. Open by design (not checked here): data.columns, a mapping of column
    names checked on its own, and lora.target_modules, a list or 'all-linear'."""
    problems = []
    top = {f.name for f in fields(AblateConfig)}
    for key in set(cfg) - top:
        problems.append(f"{key}: unknown key (top-level keys: {', '.join(sorted(top))})")
    for group, schemas in GROUP_SCHEMAS.items():
        node = cfg.get(group)
        if not isinstance(node, dict):
            continue
        kind = node.get("kind") if None not in schemas else None
        if kind not in schemas:
            problems.append(f"{group}.kind = {kind!r}: must be one of {', '.join(map(str, schemas))}")
            continue
        known = {f.name for f in fields(schemas[kind])}
        for key in sorted(set(node) - known):
            problems.append(f"{group}.{key}: unknown key ({group} keys: {', '.join(sorted(known - {'kind'}))})")
    return problems


def _get(cfg: dict, dotted: str):
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _missing(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _missing(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "???" else []


def cell_problems(cfg: DictConfig | dict) -> list[str]:
    """Every range problem of one composed cell config, as 'key = value: must be ...' lines."""
    cfg = as_plain(cfg)
    problems = []

    def check(key: str, value, rule) -> None:
        ok, wanted = rule
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} = {value}: must be finite")
        elif not ok(value):
            problems.append(f"{key} = {value}: must be {wanted}")

    for key in _missing(cfg):  # a `???` nobody filled in, e.g. model.path with model=hub
        problems.append(f"{key}: missing value (set it on the command line, e.g. {key}=...)")
    problems += _unknown_keys(cfg)
    objective = cfg["objective"]
    name = objective["name"]
    if name not in OBJECTIVES:
        problems.append(f"objective.name = {name!r}: unknown; known: {', '.join(sorted(OBJECTIVES))}")
    elif set(OBJECTIVES[name].hyperparameters) - set(objective):
        # objective.name=ipo over objective=dpo: dpo's settings under ipo's name
        lacking = sorted(set(OBJECTIVES[name].hyperparameters) - set(objective))
        problems.append(f"objective.name = {name!r}: the objective's settings are another objective's (no "
                        f"{', '.join(lacking)}); choose an objective with objective={name}, not objective.name")
    else:
        known = OBJECTIVES[name].hyperparameters
        for param in known:
            if param == "terms":  # a combination: each term's name, weight and own hyper-parameters
                problems += term_problems(objective[param])
                for i, term in enumerate(objective[param] if not term_problems(objective[param]) else []):
                    for key, value in term.items():
                        if key not in ("name", "weight"):
                            check(f"objective.terms[{i}].{key}", value, objective_rule(term["name"], key))
                continue
            check(f"objective.{param}", objective[param], objective_rule(name, param))
        for param in set(objective) - set(known) - {"name"}:  # forced in with +objective.x=...
            problems.append(f"objective.{param}: not a parameter of {name} (it takes {', '.join(known)})")
    for key, rule in RULES.items():
        value = _get(cfg, key)
        if value is not None and value != "???":
            check(key, value, rule)
    if problems:  # the checks below combine keys; report what is wrong so far rather than crash on it
        return problems

    trainer, data = cfg["trainer"], cfg["data"]
    if trainer["batch_size"] % trainer["grad_accum"]:
        problems.append(
            f"trainer.batch_size = {trainer['batch_size']}: must be divisible by "
            f"trainer.grad_accum = {trainer['grad_accum']}"
        )
    if data["max_prompt_length"] >= data["max_length"]:
        problems.append(
            f"data.max_prompt_length = {data['max_prompt_length']}: must be < "
            f"data.max_length = {data['max_length']} (completions need room)"
        )
    if cfg["model"]["dtype"] not in DTYPES:
        problems.append(f"model.dtype = {cfg['model']['dtype']!r}: must be one of {', '.join(DTYPES)}")
    targets = cfg["lora"]["target_modules"]
    if not (targets == "all-linear" or (isinstance(targets, list) and len(targets) > 0)):
        problems.append(f"lora.target_modules = {targets}: must be a non-empty list or 'all-linear'")
    problems += _split_problems(data)
    if data["kind"] == "files" and not data["train_files"]:
        problems.append("data.train_files: empty; give one or more .jsonl/.parquet files")
    if not (isinstance(cfg["device"], str) and DEVICE.fullmatch(cfg["device"])):
        problems.append(f"device = {cfg['device']!r}: must be auto, cpu, mps, cuda or cuda:N")
    problems += _data_problems(data)
    model = cfg["model"]
    if model["kind"] == "embedded":
        if model["hidden_size"] % model["num_heads"]:
            problems.append(f"model.hidden_size = {model['hidden_size']}: must be divisible by "
                            f"model.num_heads = {model['num_heads']}")
    elif model.get("gguf_file"):
        from ablate.train.gguf import gguf_problem

        problem = gguf_problem(model)
        problems += [problem] if problem else []
    return problems


def _data_problems(data: dict) -> list[str]:
    problems = []
    if data["kind"] == "verbosity_trap":
        low, high = data["min_symbols"], data["max_symbols"]
        if low > high:
            problems.append(f"data.min_symbols = {low}: must be <= data.max_symbols = {high}")
        elif (low | 1) > high:  # prompts have an odd number of symbols (no majority ties)
            problems.append(f"data.min_symbols..max_symbols = {low}..{high}: must include an odd number")
        if data["min_filler"] > data["max_filler"]:
            problems.append(f"data.min_filler = {data['min_filler']}: must be <= data.max_filler = "
                            f"{data['max_filler']}")
    columns = data.get("columns")
    if columns is not None:
        if not isinstance(columns, dict):
            problems.append(f"data.columns = {columns!r}: must be a mapping like {{prompt: question}}")
        else:
            for key, value in columns.items():
                if key not in CANONICAL_COLUMNS:
                    problems.append(f"data.columns.{key}: unknown; maps one of {', '.join(CANONICAL_COLUMNS)}")
                elif not isinstance(value, str) or not value.strip():
                    problems.append(f"data.columns.{key} = {value!r}: must be a column name")
    return problems


def _split_problems(data: dict) -> list[str]:
    """The validation/test sizes, checked before anything runs where the held-out count is known."""
    validation, test = data.get("validation_pairs"), data.get("test_pairs")
    if validation is None:
        return ["data.test_pairs: set data.validation_pairs too (the test pairs are what validation leaves)"] \
            if test is not None else []
    if data["kind"] != "verbosity_trap":  # files and hub: counted when the data is read (a clear error then)
        return []
    available = 2 * data["n_heldout_per_slice"]  # two slices: clean, verbose_rejected
    if data.get("max_heldout_pairs") is not None:
        available = min(available, data["max_heldout_pairs"])
    wanted = validation + (test if test is not None else 1)
    if wanted > available:
        return [f"data.validation_pairs = {validation}, data.test_pairs = {test}: more than the {available} "
                f"held-out pairs (leave at least one for test)"]
    return []


def validate_cell(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming the cell (its overrides) and every offending key."""
    problems = cell_problems(cfg)
    if problems:
        cell = " ".join(overrides) if overrides else "(no overrides)"
        raise ConfigError(f"invalid cell [{cell}]:\n  " + "\n  ".join(problems))
