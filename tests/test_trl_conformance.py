"""Every objective TRL 1.16's DPOTrainer also has, against TRL's own loss code: the same loss and gradient.

TRL computes its losses inline in DPOTrainer._compute_loss, from per-token log-probs of a model forward. The test
runs that very method on a stand-in trainer and model whose forward returns chosen per-token log-probs (float64,
zero off the completion, as TRL's labels of -100 give), and ablate's objective on their per-sequence sums — the
SequenceLogps the trainer hands it — then compares the batch loss and its gradient with respect to every token's
log-prob (relative 1e-6). Hyper-parameters are varied, so a parameter TRL ignores (or we ignore) shows.

Where the two differ on purpose the test states how: hinge is TRL's loss divided by β (δ = 1/β, ablate's margin
parameterisation); dpo's label_smoothing (cDPO) is checked against the cDPO formula, since TRL 1.16's sigmoid loss
ignores label_smoothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from trl import DPOTrainer

from ablate.train.objectives import OBJECTIVES, SequenceLogps, get_objective, term_settings
from ablate.train.scoring import pair_tails, wpo_weights

B, L = 5, 9  # pairs; sequence length (column 0 is the prompt, then up to 8 completion tokens, then padding)
RTOL = 1e-6

# ablate objective -> (TRL loss types, loss weights); TRL's beta/label_smoothing/discopop_tau come from the settings
TRL_NAMES = {"dpo": ["sigmoid"], "ipo": ["ipo"], "hinge": ["hinge"], "nca_pair": ["nca_pair"],
             "exo_pair": ["exo_pair"], "robust": ["robust"], "bco_pair": ["bco_pair"], "sppo_hard": ["sppo_hard"],
             "aot": ["aot"], "aot_unpaired": ["aot_unpaired"], "apo_zero": ["apo_zero"], "apo_down": ["apo_down"],
             "discopop": ["discopop"], "sigmoid_norm": ["sigmoid_norm"], "sft": ["sft"]}
TERM_NAMES = {"dpo": "sigmoid"}  # a combination term's TRL loss type, where the name differs
CASES = [  # (objective, settings)
    ("dpo", {"beta": 0.1, "label_smoothing": 0.0}), ("dpo", {"beta": 0.5, "label_smoothing": 0.0}),
    ("ipo", {"tau": 0.1}), ("ipo", {"tau": 1.0}),
    ("hinge", {"delta": 10.0}), ("hinge", {"delta": 2.0}),
    ("nca_pair", {"beta": 0.1}), ("nca_pair", {"beta": 0.7}),
    ("exo_pair", {"beta": 0.1, "label_smoothing": 1e-3}), ("exo_pair", {"beta": 0.4, "label_smoothing": 0.2}),
    ("robust", {"beta": 0.1, "label_smoothing": 0.1}), ("robust", {"beta": 0.3, "label_smoothing": 0.3}),
    ("bco_pair", {"beta": 0.1}), ("bco_pair", {"beta": 0.6}),
    ("sppo_hard", {"beta": 0.1}), ("sppo_hard", {"beta": 2.0}),
    ("aot", {"beta": 0.1, "label_smoothing": 0.0}), ("aot", {"beta": 0.5, "label_smoothing": 0.2}),
    ("aot_unpaired", {"beta": 0.1, "label_smoothing": 0.0}), ("aot_unpaired", {"beta": 0.5, "label_smoothing": 0.2}),
    ("apo_zero", {"beta": 0.1}), ("apo_zero", {"beta": 0.8}),
    ("apo_down", {"beta": 0.1}), ("apo_down", {"beta": 0.8}),
    ("discopop", {"beta": 0.1, "tau": 0.05}), ("discopop", {"beta": 0.3, "tau": 0.5}),
    ("sigmoid_norm", {"beta": 0.1}), ("sigmoid_norm", {"beta": 3.0}),
    ("sft", {}),
    ("mpo", None), ("rpo", None),
    ("combo", {"terms": [{"name": "ipo", "weight": 0.5, "tau": 0.2}, {"name": "ipo", "weight": 0.25, "tau": 0.2}]}),
    ("combo", {"terms": [{"name": "nca_pair", "weight": 0.3, "beta": 0.2}, {"name": "apo_zero", "weight": 1.5,
                                                                             "beta": 0.2}]}),
]


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def batch(seed: int, dtype=torch.float64):
    """(raw per-token log-probs (2B, L-1) that require grad, completion mask (2B, L), reference sums (B,), (B,))."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L, (2 * B,), generator=g)
    completion_mask = torch.zeros(2 * B, L, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        completion_mask[i, 1:1 + n] = 1
    raw = (-torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    ref = (-torch.rand(2 * B, generator=g, dtype=torch.float64) * 2 * lengths).to(dtype)
    return raw, completion_mask, ref[:B], ref[B:]


def trl_loss(loss_types: list[str], weights: list[float], beta: float, label_smoothing: float, discopop_tau: float,
             raw, completion_mask, ref_chosen, ref_rejected, f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
             ld_alpha: float | None = None, ref_raw=None, log_sum_sq=None):
    """TRL 1.16's DPOTrainer._compute_loss on a stand-in trainer whose model returns these per-token log-probs.
    With `ref_raw` (per-token reference log-probs) TRL computes the reference sums itself (as with ld_alpha it must:
    it splits them too); with `log_sum_sq` (per-token log Σ_v p(v)²) it applies WPO's weights."""
    trainer = object.__new__(DPOTrainer)
    shift = completion_mask[:, 1:]
    per_token = raw * shift  # TRL's fused head: log-prob 0 where the label is -100
    zeros = torch.zeros_like(per_token)

    def forward(per_token):
        return lambda **_: SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                                           log_sum_sq_probs=log_sum_sq)

    stand_in = torch.nn.Module()  # TRL asks whether it is a peft model (no) and for its checkpointing state
    stand_in.is_gradient_checkpointing = False
    vars(trainer).update(
        accelerator=_Accelerator(), model=stand_in,
        loss_types=loss_types, loss_weights=weights, beta=beta, label_smoothing=label_smoothing,
        f_divergence_type=f_divergence, f_alpha_divergence_coef=f_alpha, use_weighting=log_sum_sq is not None,
        ld_alpha=ld_alpha, precompute_ref_logps=ref_raw is None, aux_loss_enabled=False,
        ref_model=forward(ref_raw * shift) if ref_raw is not None else None,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None))
    model = forward(per_token)

    inputs = {"input_ids": torch.ones(2 * B, L, dtype=torch.long), "attention_mask": torch.ones(2 * B, L),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def ablate_loss(name: str, settings: dict, raw, completion_mask, ref_chosen, ref_rejected):
    """ablate's batch loss, as its trainer forms it: the objective on per-sequence sums, mean over pairs."""
    shift = completion_mask[:, 1:]
    sums, tokens = (raw * shift).sum(dim=1), shift.sum(dim=1).to(raw.dtype)
    logps = SequenceLogps(sums[:B], sums[B:], tokens[:B], tokens[B:], ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    return get_objective(name)(logps, **settings).losses.mean()


def trl_arguments(name: str, settings: dict) -> tuple[list[str], list[float], float, float, float]:
    """TRL's loss types, weights, beta, label_smoothing and discopop_tau for this objective and settings."""
    if get_objective(name).combination:
        terms = [term_settings(t) | {"name": t["name"], "weight": t["weight"]} for t in settings["terms"]]
        shared = {k: v for t in terms for k, v in t.items() if k not in ("name", "weight")}
        for t in terms:  # TRL's terms share one beta (and label_smoothing): only such combinations compare
            assert all(t.get(k, v) == v for k, v in shared.items()), "TRL terms share their hyper-parameters"
        types = [TERM_NAMES.get(t["name"], t["name"]) for t in terms]
        return types, [t["weight"] for t in terms], shared.get("beta", shared.get("tau", 0.1)), \
            shared.get("label_smoothing", 0.0), shared.get("tau", 0.05)
    beta = {"ipo": settings.get("tau"), "hinge": 1 / settings["delta"] if "delta" in settings else None}.get(
        name, settings.get("beta", 0.1))
    return (TRL_NAMES[name], [1.0], beta, settings.get("label_smoothing", 0.0),
            settings.get("tau", 0.05) if name == "discopop" else 0.05)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, settings", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_loss_and_gradient_equal_trl(name, settings, seed):
    settings = settings if settings is not None else {
        k: v for k, v in vars(get_objective(name).schema()).items() if k != "name"}
    raw, mask, ref_chosen, ref_rejected = batch(seed)
    ours = ablate_loss(name, settings, raw, mask, ref_chosen, ref_rejected)
    (grad_ours,) = torch.autograd.grad(ours, raw)
    theirs = trl_loss(*trl_arguments(name, settings), raw, mask, ref_chosen, ref_rejected)
    (grad_theirs,) = torch.autograd.grad(theirs, raw)
    if name == "hinge":  # relu(δ − h) = relu(1 − βh)/β with δ = 1/β: same minimiser, TRL's value and gradient x β
        ours, grad_ours = ours / settings["delta"], grad_ours / settings["delta"]
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=RTOL, atol=1e-12)
    assert grad_ours.abs().sum() > 0


@pytest.mark.parametrize("divergence, alpha", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5),
                                               ("alpha_divergence", 0.3), ("alpha_divergence", 1.7),
                                               ("alpha_divergence", 1.0)])
def test_fdpo_equals_trl_with_its_f_divergence(divergence, alpha):
    """TRL's alpha-divergence path knows float16/bfloat16/float32 only (its clamp table): that case runs in float32."""
    settings = {"beta": 0.3, "divergence": divergence, "alpha": alpha}
    dtype = torch.float32 if divergence == "alpha_divergence" else torch.float64
    raw, mask, ref_chosen, ref_rejected = batch(4, dtype)
    ours = ablate_loss("fdpo", settings, raw, mask, ref_chosen, ref_rejected)
    (grad_ours,) = torch.autograd.grad(ours, raw)
    theirs = trl_loss(["sigmoid"], [1.0], 0.3, 0.0, 0.05, raw, mask, ref_chosen, ref_rejected, divergence, alpha)
    (grad_theirs,) = torch.autograd.grad(theirs, raw)
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=RTOL, atol=1e-9)


# ------------------------------------------------------------------ CPOTrainer: simpo, cpo, alphapo
def trl_cpo_loss(loss_type: str, beta: float, alpha: float, simpo_gamma: float, chosen, rejected):
    """TRL 1.16's CPOTrainer.cpo_loss (trl.experimental.cpo) on a stand-in trainer: per-pair losses."""
    from trl.experimental.cpo import CPOTrainer

    trainer = object.__new__(CPOTrainer)
    vars(trainer).update(accelerator=_Accelerator(), alpha=alpha, beta=beta, simpo_gamma=simpo_gamma,
                         label_smoothing=0.0, loss_type=loss_type)
    return CPOTrainer.cpo_loss(trainer, chosen, rejected)[0]


@pytest.mark.parametrize("name, settings, trl", [
    ("simpo", {"beta": 2.0, "gamma": 0.5, "nll_weight": 0.0}, ("simpo", 2.0, 0.0, 0.5)),
    ("simpo", {"beta": 5.0, "gamma": 1.5, "nll_weight": 0.0}, ("simpo", 5.0, 0.0, 1.5)),
    ("alphapo", {"beta": 2.0, "gamma": 0.5, "alpha": 0.25}, ("simpo", 2.0, 0.25, 0.5)),
    ("alphapo", {"beta": 4.0, "gamma": 1.0, "alpha": -0.4}, ("simpo", 4.0, -0.4, 1.0)),
    ("cpo", {"beta": 0.1, "nll_weight": 0.0}, ("sigmoid", 0.1, 0.0, 0.0)),
], ids=["simpo", "simpo-2", "alphapo", "alphapo-2", "cpo without NLL"])
def test_reference_free_objectives_equal_trl_cpo_loss(name, settings, trl):
    """SimPO and AlphaPO on length-normalised log-probs (TRL's simpo path averages per token), CPO's preference term
    on summed ones. (The NLL terms differ on purpose: ablate averages per example, TRL over the batch's tokens.)"""
    raw, mask, _, _ = batch(5)
    shift = mask[:, 1:]
    sums, tokens = (raw * shift).sum(dim=1), shift.sum(dim=1).to(torch.float64)
    ours = ablate_loss(name, settings, raw, mask, None, None)
    (grad_ours,) = torch.autograd.grad(ours, raw)
    average = trl[0] == "simpo"
    chosen, rejected = (sums[:B] / tokens[:B], sums[B:] / tokens[B:]) if average else (sums[:B], sums[B:])
    theirs = trl_cpo_loss(*trl, chosen, rejected).mean()
    (grad_theirs,) = torch.autograd.grad(theirs, raw)
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=RTOL, atol=1e-12)


def test_dpo_label_smoothing_is_cdpo_which_trl_1_16_ignores():
    """TRL 1.16's sigmoid loss ignores label_smoothing (its fused path dropped cDPO); ablate keeps the paper's cDPO:
    L = −(1 − ε) log σ(βh) − ε log σ(−βh), checked here by the formula written out."""
    raw, mask, ref_chosen, ref_rejected = batch(3)
    ours = ablate_loss("dpo", {"beta": 0.2, "label_smoothing": 0.25}, raw, mask, ref_chosen, ref_rejected)
    shift = mask[:, 1:]
    sums = (raw * shift).sum(dim=1)
    h = (sums[:B] - ref_chosen) - (sums[B:] - ref_rejected)
    formula = (-(0.75) * F.logsigmoid(0.2 * h) - 0.25 * F.logsigmoid(-0.2 * h)).mean()
    torch.testing.assert_close(ours, formula, rtol=RTOL, atol=0)
    theirs = trl_loss(["sigmoid"], [1.0], 0.2, 0.25, 0.05, raw, mask, ref_chosen, ref_rejected)
    assert not math.isclose(ours.item(), theirs.item(), rel_tol=1e-3)  # TRL 1.16 trains plain DPO here


def test_every_trl_dpo_loss_type_is_an_ablate_objective():
    """The loss types TRL 1.16's DPOTrainer knows (from its own error message) all have an objective here."""
    import inspect
    import re

    source = inspect.getsource(DPOTrainer._compute_loss)
    trl_types = set(re.findall(r"'(\w+)'", source[source.index("Should be one of ['sigmoid'"):].split("]")[0]))
    ours = {t for names in TRL_NAMES.values() for t in names}
    assert trl_types == ours, trl_types ^ ours
    assert set(TRL_NAMES) <= set(OBJECTIVES)


# -------------------------------------------------------------- KTOTrainer: kto, apo_zero_unpaired
def trl_kto_loss(loss_type: str, beta: float, desirable_weight: float, undesirable_weight: float, raw, mask, labels,
                 ref, kl_policy, kl_reference):
    """TRL 1.16's KTOTrainer._compute_loss on a stand-in trainer and model (labelled, unpaired completions)."""
    from trl import KTOTrainer

    trainer = object.__new__(KTOTrainer)
    per_token = raw * mask[:, 1:]
    zeros = torch.zeros_like(per_token)
    kl_width = 3
    kl_tokens = torch.zeros(len(kl_policy), kl_width - 1, dtype=raw.dtype)
    kl_tokens[:, 0] = kl_policy  # one completion token carries the KL sequence's summed log-prob
    vars(trainer).update(
        accelerator=_Accelerator(), model=SimpleNamespace(training=True), beta=beta, loss_type=loss_type,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, precompute_ref_logps=True,
        calculate_KL=loss_type == "kto", aux_loss_enabled=False, _tp_size=1, _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, args=SimpleNamespace())

    def model(**kwargs):
        if kwargs["input_ids"].shape[1] == kl_width:  # the KL batch's forward
            return SimpleNamespace(log_probs=kl_tokens)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    n = len(labels)
    inputs = {"input_ids": torch.ones(n, mask.shape[1], dtype=torch.long), "attention_mask": torch.ones_like(mask),
              "completion_mask": mask, "label": labels, "ref_logps": ref, "ref_KL_logps": kl_reference,
              "KL_input_ids": torch.ones(len(kl_policy), kl_width, dtype=torch.long),
              "KL_attention_mask": torch.ones(len(kl_policy), kl_width, dtype=torch.long),
              "KL_completion_mask": torch.ones(len(kl_policy), kl_width, dtype=torch.long)}
    return KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("name, settings", [
    ("kto", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
    ("kto", {"beta": 0.5, "desirable_weight": 1.33, "undesirable_weight": 0.7}),
    ("apo_zero_unpaired", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
    ("apo_zero_unpaired", {"beta": 0.4, "desirable_weight": 0.8, "undesirable_weight": 1.5}),
], ids=["kto", "kto-2", "apo_zero_unpaired", "apo_zero_unpaired-2"])
def test_unpaired_objectives_equal_trl_kto(name, settings):
    """On unpaired data (desirable first, as TRL orders its losses): the batch loss and its gradient; kto's KL
    baseline from a mismatched batch whose mean log-ratio is positive (so it is not clamped to 0)."""
    raw, mask, ref_a, ref_b = batch(6)
    ref = torch.cat([ref_a, ref_b])
    labels = torch.tensor([True] * 3 + [False] * (2 * B - 3))
    kl_policy = torch.tensor([-3.0, -5.0, -2.5], dtype=torch.float64)
    kl_reference = torch.tensor([-4.0, -5.5, -3.5], dtype=torch.float64)
    shift = mask[:, 1:]
    sums, tokens = (raw * shift).sum(dim=1), shift.sum(dim=1).to(torch.float64)
    logps = SequenceLogps(sums[labels], sums[~labels], tokens[labels], tokens[~labels], ref_chosen=ref[labels],
                          ref_rejected=ref[~labels], kl_policy=kl_policy, kl_reference=kl_reference, paired=False)
    ours = get_objective(name)(logps, **settings).losses.mean()
    (grad_ours,) = torch.autograd.grad(ours, raw)
    theirs = trl_kto_loss(name, settings["beta"], settings["desirable_weight"], settings["undesirable_weight"], raw,
                          mask, labels, ref, kl_policy, kl_reference)
    (grad_theirs,) = torch.autograd.grad(theirs, raw)
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=RTOL, atol=1e-12)


LENGTH_AND_WEIGHT_CASES = [("ld_dpo", {"beta": 0.1, "ld_alpha": 0.5}), ("ld_dpo", {"beta": 0.4, "ld_alpha": 0.0}),
                           ("ld_dpo", {"beta": 0.2, "ld_alpha": 1.0}), ("wpo", {"beta": 0.1}), ("wpo", {"beta": 0.7})]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, settings", LENGTH_AND_WEIGHT_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(LENGTH_AND_WEIGHT_CASES)])
def test_length_desensitised_and_weighted_dpo_equal_trl(name, settings, seed):
    """LD-DPO (ld_alpha) and WPO (use_weighting): TRL splits/weights per token inside its trainer; ablate's trainer
    hands the objective the tails (scoring.pair_tails) and weights (scoring.wpo_weights) of the same per-token
    values. Both sides start from the same per-token policy and reference log-probs (and log Σp² for WPO)."""
    raw, mask, _, _ = batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    ref_raw = -torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64) * 2
    log_sum_sq = -torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64) * 1.5 if name == "wpo" else None
    shift = mask[:, 1:]
    sums, tokens, ref_sums = (raw * shift).sum(1), shift.sum(1).to(raw.dtype), (ref_raw * shift).sum(1)
    fields = dict(ref_chosen=ref_sums[:B], ref_rejected=ref_sums[B:])
    if name == "ld_dpo":
        tails, ref_tails = pair_tails(raw * shift, shift), pair_tails(ref_raw * shift, shift)
        fields |= dict(chosen_tail=tails[:B], rejected_tail=tails[B:], ref_chosen_tail=ref_tails[:B],
                       ref_rejected_tail=ref_tails[B:])
    else:
        weights = wpo_weights((raw.detach() - log_sum_sq) * shift, shift)
        fields |= dict(chosen_wpo_weight=weights[:B], rejected_wpo_weight=weights[B:])
    ours = get_objective(name)(SequenceLogps(sums[:B], sums[B:], tokens[:B], tokens[B:], **fields),
                               **settings).losses.mean()
    (grad_ours,) = torch.autograd.grad(ours, raw)
    theirs = trl_loss(["sigmoid"], [1.0], settings["beta"], 0.0, 0.05, raw, mask, None, None,
                      ld_alpha=settings.get("ld_alpha"), ref_raw=ref_raw, log_sum_sq=log_sum_sq)
    (grad_theirs,) = torch.autograd.grad(theirs, raw)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=RTOL, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=RTOL, atol=1e-12)
    if name == "ld_dpo" and settings["ld_alpha"] < 1:  # the split matters: not plain DPO on these pairs
        plain = get_objective("dpo")(SequenceLogps(sums[:B], sums[B:], tokens[:B], tokens[B:], **{
            k: v for k, v in fields.items() if k in ("ref_chosen", "ref_rejected")}), beta=settings["beta"])
        assert not torch.allclose(plain.losses.mean(), ours)
