"""Config composition and validation (ablate/config.py, conf/): types at compose time, ranges in validate_cell.

Hydra composes with the structured schemas, so typos, wrong types and another objective's keys
fail when the config is composed; range problems are caught by `validate_cell`, whose error names
the cell (its overrides) and the offending key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from ablate.config import OBJECTIVE_PARAMETER_RULES, ConfigError, validate_cell
from ablate.train.objectives import OBJECTIVES

CONF = Path(__file__).resolve().parents[1] / "conf"


def stems(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# ------------------------------------------------------------------------------ composition
def test_defaults_compose_and_validate(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.objective.name == "dpo"
    assert cfg.model.kind == "embedded"
    assert cfg.data.kind == "verbosity_trap"
    assert OmegaConf.missing_keys(cfg) == set()
    validate_cell(cfg)  # the defaults are a runnable cell


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_composes_and_validates(compose_cfg, name):
    cfg = compose_cfg([f"objective={name}"])
    assert cfg.objective.name == name
    assert set(cfg.objective) == {"name", *OBJECTIVES[name].hyperparameters}
    validate_cell(cfg, [f"objective={name}"])


@pytest.mark.parametrize(
    ("override", "cause", "key"),
    [
        ("lora.rank=4", (ConfigAttributeError, ConfigKeyError), "lora.rank"),  # typo of lora.r
        ("objective.beta=abc", ValidationError, "objective.beta"),  # wrong type
        ("objective.gamma=1", (ConfigAttributeError, ConfigKeyError), "objective.gamma"),  # simpo's key, dpo cell
        ("lora.r=abc", ValidationError, "lora.r"),
        ("trainer.batch_size=1.5", ValidationError, "trainer.batch_size"),
        ("trainer.group_by_length=sometimes", ValidationError, "trainer.group_by_length"),
    ],
)
def test_compose_time_rejection(compose_cfg, override, cause, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override])
    assert isinstance(info.value.__cause__, cause), repr(info.value.__cause__)
    assert key in str(info.value) + str(info.value.__cause__)


# ----------------------------------------------------------------------------- range checks
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["objective.beta=-1"], "objective.beta"),
        (["objective.beta=0"], "objective.beta"),
        (["lora.r=0"], "lora.r"),
        (["objective.label_smoothing=0.5"], "objective.label_smoothing"),
        (["trainer.lr=0"], "trainer.lr"),
        (["trainer.batch_size=10", "trainer.grad_accum=3"], "trainer.batch_size"),
        (["trainer.grad_accum=0"], "trainer.grad_accum"),  # must be a ConfigError, not a ZeroDivisionError
        (["data.max_prompt_length=64"], "data.max_prompt_length"),  # == data.max_length (64)
        (["data.max_prompt_length=80", "data.max_length=40"], "data.max_prompt_length"),
        (["lora.dropout=1.0"], "lora.dropout"),
        (["model.dtype=float8"], "model.dtype"),
        (["objective=simpo", "objective.gamma=-0.5"], "objective.gamma"),
        (["objective=ipo", "objective.tau=0"], "objective.tau"),
        (["+objective.gamma=1"], "objective.gamma"),  # forced past the schema: not a dpo parameter
        (["data.validation_pairs=0"], "data.validation_pairs"),
        (["data.test_pairs=10"], "data.test_pairs"),  # a test split needs a validation split
        (["data.validation_pairs=600"], "data.validation_pairs"),  # 2 x 300 held-out pairs: none left for test
        (["data.validation_pairs=300", "data.test_pairs=301"], "data.validation_pairs"),
    ],
)
def test_validate_cell_rejects_out_of_range(compose_cfg, overrides, key):
    cfg = compose_cfg(overrides)  # composes: the types are right, only the values are not
    with pytest.raises(ConfigError) as info:
        validate_cell(cfg, overrides)
    message = str(info.value)
    assert " ".join(overrides) in message  # names the cell ...
    assert key in message  # ... and the key


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective=combo", "objective.terms=[{name:dpo,weight:1.0},{name:ppo,weight:0.5}]"],
         "objective.terms[1].name = 'ppo': unknown; known:"),
        (["objective=combo", "objective.terms=[{name:dpo,weight:-0.5}]"],
         "objective.terms[0].weight = -0.5: a finite number >= 0"),
        (["objective=combo", "objective.terms=[{name:dpo,weight:0},{name:sft,weight:0.0}]"],
         "objective.terms: every weight is 0 (nothing would be trained)"),
        (["objective=combo", "objective.terms=[]"], "objective.terms: a non-empty list of {name, weight, ...}"),
        (["objective=combo", "objective.terms=[{name:dpo}]"], "objective.terms[0] = {'name': 'dpo'}: a mapping with"),
        (["objective=combo", "objective.terms=[{name:dpo,weight:1,gamma:0.5}]"],
         "objective.terms[0]: gamma not a parameter of dpo (it takes beta, label_smoothing)"),
        (["objective=combo", "objective.terms=[{name:dpo,weight:1,beta:0}]"],
         "objective.terms[0].beta = 0: must be > 0"),
        (["objective=combo", "objective.terms=[{name:kto,weight:1}]"], "objective.terms[0].name = 'kto': a term is a"),
        (["objective=combo", "objective.terms=[{name:mpo,weight:1}]"], "objective.terms[0].name = 'mpo': a term is a"),
        (["objective=exo_pair", "objective.label_smoothing=0"], "objective.label_smoothing = 0.0: must be in (0, 0.5)"),
        (["objective=fdpo", "objective.divergence=kl"], "objective.divergence = kl: must be one of reverse_kl"),
    ],
    ids=["unknown term", "negative weight", "all-zero weights", "no terms", "no weight", "another's parameter",
         "term parameter out of range", "kto term", "nested combination", "exo without epsilon", "divergence"],
)
def test_bad_objective_settings_name_the_key(compose_cfg, overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as info:
        validate_cell(cfg, overrides)
    assert message in str(info.value)


def test_a_combination_uses_the_reference_only_when_a_term_does(compose_cfg):
    from ablate.train.objectives import get_objective

    free = compose_cfg(["objective=combo", "objective.terms=[{name:cpo,weight:1},{name:sft,weight:0.5}]"])
    validate_cell(free, [])
    assert not get_objective("combo").bind(free.objective).uses_reference
    assert get_objective("mpo").bind(compose_cfg(["objective=mpo"]).objective).uses_reference


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+lora.rank=4"], "lora.rank: unknown key (lora keys: alpha, dropout, r, target_modules)"),
        (["+trainer.learning_rate=1e-4"], "trainer.learning_rate: unknown key"),
        (["+seeds=3"], "seeds: unknown key"),
        (["+model.path=x"], "model.path: unknown key"),  # a hub model's key under model=embedded
        (["+data.columns.prompt=q"], "data.columns: unknown key"),  # columns exist for files and hub only
        (["objective.name=ipo"], "objective.name = 'ipo': the objective's settings are another objective's (no tau)"),
        (["data.max_train_pairs=-1"], "data.max_train_pairs = -1: must be >= 1"),
        (["data.max_train_pairs=0"], "data.max_train_pairs = 0: must be >= 1"),
        (["data.max_heldout_pairs=0"], "data.max_heldout_pairs = 0: must be >= 1"),
        (["device=gpu"], "device = 'gpu': must be auto, cpu, mps, cuda or cuda:N"),
        (["device=cuda:x"], "device = 'cuda:x'"),
        (["model.warmup_steps=-1"], "model.warmup_steps = -1: must be >= 0"),
        (["model.num_heads=3"], "model.hidden_size = 128: must be divisible by model.num_heads = 3"),
        (["data.min_symbols=8"], "data.min_symbols = 8: must be <= data.max_symbols = 7"),
        (["data.min_symbols=4", "data.max_symbols=4"], "data.min_symbols..max_symbols = 4..4: must include an odd"),
        (["data.min_filler=6"], "data.min_filler = 6: must be <= data.max_filler = 5"),
        (["threads=0"], "threads = 0: must be >= 1"),
        (["data=files", "data.train_files=[a.jsonl]", "data.on_bad_row=ignore"], "data.on_bad_row = ignore"),
        (["data=files", "data.train_files=[a.jsonl]", "data.max_overlap=2"], "data.max_overlap = 2"),
        (["data=files", "data.train_files=[a.jsonl]", "data.format=hh"], "data.format = hh"),
        (["data=files", "data.train_files=[a.jsonl]", "data.columns={question: prompt}"],
         "data.columns.question: unknown; maps one of prompt, chosen, rejected, id, slice, completion, label"),
    ],
)
def test_unknown_keys_and_out_of_range_values_are_config_errors(compose_cfg, overrides, message):
    cfg = compose_cfg(overrides)  # Hydra accepts all of these
    with pytest.raises(ConfigError) as info:
        validate_cell(cfg, overrides)
    assert message in str(info.value)


def test_open_mappings_and_valid_values_pass(compose_cfg):
    for overrides in (["device=cuda:1", "model.warmup_steps=0", "data.max_train_pairs=1", "threads=2"],
                      ["data=files", "data.train_files=[a.jsonl]", "data.columns={prompt: question, chosen: good}"],
                      ["data=hub", "data.path=x", "+data.columns.rejected=bad", "data.on_bad_row=skip"]):
        validate_cell(compose_cfg(overrides), overrides)


def test_validate_cell_lists_every_problem(compose_cfg):
    overrides = ["objective.beta=0", "lora.r=0", "trainer.lr=-1"]
    with pytest.raises(ConfigError) as info:
        validate_cell(compose_cfg(overrides), overrides)
    for key in ("objective.beta", "lora.r", "trainer.lr"):
        assert key in str(info.value)


def test_validate_cell_accepts_boundaries(compose_cfg):
    # label_smoothing in [0, 0.5), dropout in [0, 1), grad_accum dividing batch_size, prompt < length
    overrides = ["objective.label_smoothing=0.49", "lora.dropout=0.0", "trainer.batch_size=12",
                 "trainer.grad_accum=3", "data.max_prompt_length=63", "lora.r=1", "lora.target_modules=all-linear"]
    validate_cell(compose_cfg(overrides), overrides)


def test_every_objective_parameter_has_a_range_rule():
    for name, objective in OBJECTIVES.items():
        missing = set(objective.hyperparameters) - set(OBJECTIVE_PARAMETER_RULES)
        assert not missing, f"{name}: no rule in OBJECTIVE_PARAMETER_RULES for {sorted(missing)}"


# -------------------------------------------------------------------------- objective tuning
def test_embedded_simpo_tuning_applies_and_cli_wins(compose_cfg):
    tuned = compose_cfg(["objective=simpo"])
    assert (tuned.objective.beta, tuned.objective.gamma) == (2.0, 1.0)
    assert tuned.objective.nll_weight == 0.0  # untouched by the tuning file

    cli = compose_cfg(["objective=simpo", "objective.beta=3"])
    assert (cli.objective.beta, cli.objective.gamma) == (3.0, 1.0)


def test_tuning_is_only_for_its_model(compose_cfg):
    paper = OmegaConf.load(CONF / "objective" / "simpo.yaml")
    cfg = compose_cfg(["model=hub", "model.path=x", "objective=simpo"])
    assert (cfg.objective.beta, cfg.objective.gamma) == (paper.beta, paper.gamma)
    assert (paper.beta, paper.gamma) == (2.0, 0.5)


def _tuning_files() -> list[Path]:
    return sorted((CONF / "objective_tuning").glob("*.yaml"))


def test_there_is_tuning_to_check():
    assert _tuning_files(), "conf/objective_tuning/ is empty: the tuning tests below check nothing"


@pytest.mark.parametrize("path", _tuning_files(), ids=lambda p: p.stem)
def test_tuning_file_names_and_keys(compose_cfg, path):
    pairs = [(m, o) for m in stems("model") for o in stems("objective") if f"{m}_{o}" == path.stem]
    assert len(pairs) == 1, f"{path.name}: not <model>_<objective> of conf/model/*.yaml and conf/objective/*.yaml"
    model, objective = pairs[0]
    assert path.read_text().lstrip().startswith("# @package objective")
    values = OmegaConf.to_container(OmegaConf.load(path))
    unknown = set(values) - set(OBJECTIVES[objective].hyperparameters)
    assert not unknown, f"{path.name} sets keys {sorted(unknown)} that {objective} does not have"

    overrides = [f"model={model}", f"objective={objective}"] + (["model.path=x"] if model == "hub" else [])
    cfg = compose_cfg(overrides)
    for key, value in values.items():
        assert cfg.objective[key] == value, key
    validate_cell(cfg, overrides)


# ------------------------------------------------------------------------- data / model groups
@pytest.mark.parametrize("name", stems("data"))
def test_every_data_config_composes(compose_cfg, name):
    extra = {"hub": ["data.path=org/dataset"], "files": ["data.train_files=[train.jsonl]"]}.get(name, [])
    overrides = [f"data={name}", *extra]
    cfg = compose_cfg(overrides)
    named_hub_sets = {"ultrafeedback", "hh_rlhf", "kto_mix"}  # the hub kind with a dataset's id, splits and layout
    assert cfg.data.kind == ("hub" if name in named_hub_sets else name)
    assert OmegaConf.missing_keys(cfg) == set()
    validate_cell(cfg, overrides)


@pytest.mark.parametrize("name", stems("model"))
def test_every_model_config_composes(compose_cfg, name):
    extra = ["model.path=org/model"] if name == "hub" else []
    overrides = [f"model={name}", *extra]
    cfg = compose_cfg(overrides)
    assert cfg.model.kind == {"smollm2_135m": "hub"}.get(name, name)  # a named hub model
    assert OmegaConf.missing_keys(cfg) == set()
    validate_cell(cfg, overrides)


@pytest.mark.parametrize(("overrides", "key"), [(["model=hub"], "model.path"), (["data=hub"], "data.path")])
def test_missing_mandatory_value_is_a_config_error(compose_cfg, overrides, key):
    """`path: ???` composes, but the cell cannot run: validate_cell must say so before anything trains
    (ARCHITECTURE.md §1: bad config -> one clear error, nothing submitted; ConfigError: "composes but cannot run")."""
    cfg = compose_cfg(overrides)
    assert OmegaConf.missing_keys(cfg) == {key}
    with pytest.raises(ConfigError) as info:
        validate_cell(cfg, overrides)
    assert key in str(info.value) and " ".join(overrides) in str(info.value)
