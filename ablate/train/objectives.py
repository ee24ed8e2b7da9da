"""Preference objectives: one pure function per objective, and the registry that names them.

Every objective maps the same record of sequence log-probs to per-example losses and the rewards
it logs. Nothing else differs between arms of an ablation: the trainer, data and held-out metrics
are shared (docs/ARCHITECTURE.md §4). Hyper-parameters are keyword-only and named as in the paper; each
objective's config schema is a dataclass registered next to its function, so the registry, the
Hydra schemas and conf/objective/*.yaml cannot drift apart (tests/test_objectives.py checks it).

Adding an objective, the checklist:
1. A pure function `def name(logps: SequenceLogps, *, <hyper-parameters>) -> ObjectiveOutput` whose docstring
   gives the paper (with its link), the formula as an indented block (the report quotes it: `formula`), the
   defaults' sources and every deviation from the paper or TRL.
2. Its config dataclass (`name` first, then exactly the keyword-only parameters, with defaults) and
   `@register(name, Config, uses_reference=...)` (+ `needs_kl_batch`, `unpaired` where it applies).
3. conf/objective/<name>.yaml: `defaults: [schema_<name>, _self_]`, every parameter with its default and a
   `# source:` comment.
4. A range rule for each new parameter name in ablate/config.py (OBJECTIVE_PARAMETER_RULES, or
   OBJECTIVE_SPECIFIC_RULES for one objective's own range).
5. Tests: a hand-derived value in tests/test_objectives.py; where TRL has the loss, a case in
   tests/test_trl_conformance.py (value and gradient against TRL's own code); otherwise an independent
   implementation from the paper's formula.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore


@dataclass(frozen=True)
class SequenceLogps:
    """Summed completion log-probs of one batch of B preference pairs (or of unpaired examples).

    `chosen`/`rejected` are sums over completion tokens only, `*_tokens` the completion lengths
    (for length normalisation). Reference log-probs come from the same model with the LoRA adapter
    disabled; they are None for reference-free objectives. `kl_policy`/`kl_reference` are the
    summed log-probs of mismatched (prompt_i, completion_j) sequences, only for objectives that
    ask for a KL batch (KTO).
    """

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,) float
    rejected_tokens: Tensor  # (B,) float
    ref_chosen: Tensor | None = None  # (B,)
    ref_rejected: Tensor | None = None  # (B,)
    kl_policy: Tensor | None = None  # (K,)
    kl_reference: Tensor | None = None  # (K,)
    # False: unpaired examples (KTO data); `chosen` holds the B_D desirable and `rejected` the B_U
    # undesirable completions of different prompts, B_D and B_U unrelated (either may be 0)
    paired: bool = True
    # Only for objectives that ask for them (Objective.sequence_parts; ablate.train.scoring.SEQUENCE_PARTS):
    # "tail": summed log-probs of the completion tokens past the pair's shared length min(n_w, n_l) (LD-DPO)
    chosen_tail: Tensor | None = None  # (B,)
    rejected_tail: Tensor | None = None  # (B,)
    ref_chosen_tail: Tensor | None = None  # (B,)
    ref_rejected_tail: Tensor | None = None  # (B,)
    # "wpo_weight": exp(mean_t [log π(y_t) − log Σ_v π(v)²]) of the policy, without gradient (WPO)
    chosen_wpo_weight: Tensor | None = None  # (B,)
    rejected_wpo_weight: Tensor | None = None  # (B,)


@dataclass(frozen=True)
class ObjectiveOutput:
    """Per-example losses plus the rewards the objective logs (TRL's rewards/chosen, rewards/rejected)."""

    losses: Tensor  # (B,); unpaired examples: (B_D + B_U,)
    chosen_rewards: Tensor  # (B,) detached; unpaired: (B_D,)
    rejected_rewards: Tensor  # (B,) detached; unpaired: (B_U,)


@dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable[..., ObjectiveOutput]
    schema: type  # dataclass: `name` + the objective's keyword-only hyper-parameters
    uses_reference: bool  # False: reference-free, the trainer skips the reference forward
    needs_kl_batch: bool = False  # True: the trainer adds mismatched prompt/completion pairs
    unpaired: bool = False  # True: also learns from unpaired labelled completions (SequenceLogps.paired False)
    combination: bool = False  # True: a weighted sum of other objectives (`terms`); see `bind`
    sequence_parts: tuple[str, ...] = ()  # what else the trainer scores per sequence (SequenceLogps' tail, wpo_weight)

    def bind(self, settings) -> Objective:
        """This objective for a cell's settings (cfg.objective): a combination uses the reference only when one of its
        terms does, so a reference-free combination (e.g. cpo + sft) skips the reference forward like its terms, and
        asks for the sequence parts its terms ask for."""
        if not self.combination:
            return self
        terms = [get_objective(term["name"]) for term in settings["terms"]]
        parts = tuple(dict.fromkeys(part for term in terms for part in term.sequence_parts))
        return dataclasses.replace(self, uses_reference=any(t.uses_reference for t in terms), sequence_parts=parts)

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.schema) if f.name != "name")

    def __call__(self, logps: SequenceLogps, **hyperparameters) -> ObjectiveOutput:
        if not logps.paired and not self.unpaired:
            raise ValueError(f"{self.name} compares the chosen and the rejected completion of a pair; it cannot "
                             "learn from unpaired examples")
        return self.loss(logps, **hyperparameters)


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, schema: type, *, uses_reference: bool, needs_kl_batch: bool = False,
             unpaired: bool = False, combination: bool = False, sequence_parts: tuple[str, ...] = ()):
    def wrap(loss: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        OBJECTIVES[name] = Objective(name, loss, schema, uses_reference, needs_kl_batch, unpaired, combination,
                                     sequence_parts)
        return loss

    return wrap


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}") from None


# --------------------------------------------------------------------------------------- DPO
@dataclass
class DPOConfig:
    name: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0


@register("dpo", DPOConfig, uses_reference=True)
def dpo(logps: SequenceLogps, *, beta: float, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Direct Preference Optimization (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290, eq. 7).

        h = (S_w − S_w^ref) − (S_l − S_l^ref)
        L = −(1 − ε)·log σ(β h) − ε·log σ(−β h)

    With label smoothing ε > 0 this is conservative DPO (cDPO, Mitchell 2023,
    https://ericmitchell.ai/cdpo.pdf): the labels are assumed flipped with probability ε.
    Rewards: β·(S − S^ref), as TRL logs them.
    """
    chosen_logratio = logps.chosen - logps.ref_chosen
    rejected_logratio = logps.rejected - logps.ref_rejected
    h = chosen_logratio - rejected_logratio
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return ObjectiveOutput(losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())


def _logratios(logps: SequenceLogps, objective: str) -> tuple[Tensor, Tensor]:
    """(S_w − S_w^ref, S_l − S_l^ref), with a clear error when the trainer skipped the reference."""
    if logps.ref_chosen is None or logps.ref_rejected is None:
        raise ValueError(f"{objective} needs reference log-probs (ref_chosen/ref_rejected), got None")
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected


# --------------------------------------------------------------------------------------- IPO
@dataclass
class IPOConfig:
    name: str = "ipo"
    tau: float = 0.1


@register("ipo", IPOConfig, uses_reference=True)
def ipo(logps: SequenceLogps, *, tau: float) -> ObjectiveOutput:
    """Identity Preference Optimisation (Azar et al., 2023, https://arxiv.org/abs/2310.12036, eq. 17).

        h = (S_w − S_w^ref)/n_w − (S_l − S_l^ref)/n_l
        L = (h − 1/(2τ))²

    Deviation: the paper writes h with summed log-probs; TRL (DPOTrainer, loss_type="ipo", where
    `beta` is τ) averages them per token, and we follow TRL so that τ means the same in both.
    The regression target 1/(2τ) is then a per-token log-ratio margin.
    Rewards: τ·(S − S^ref)/n, the per-token log-ratio scaled by τ, as TRL logs them.
    """
    chosen_logratio, rejected_logratio = _logratios(logps, "ipo")
    chosen_logratio = chosen_logratio / logps.chosen_tokens  # (B,) per token
    rejected_logratio = rejected_logratio / logps.rejected_tokens  # (B,) per token
    h = chosen_logratio - rejected_logratio
    losses = (h - 1 / (2 * tau)) ** 2
    return ObjectiveOutput(losses, (tau * chosen_logratio).detach(), (tau * rejected_logratio).detach())


# ------------------------------------------------------------------------------------- hinge
@dataclass
class HingeConfig:
    name: str = "hinge"
    delta: float = 10.0


@register("hinge", HingeConfig, uses_reference=True)
def hinge(logps: SequenceLogps, *, delta: float) -> ObjectiveOutput:
    """Hinge (calibration) loss of SLiC-HF (Zhao et al., 2023, https://arxiv.org/abs/2305.10425),
    on reference-normalised likelihoods as in RSO (Liu et al., 2023, https://arxiv.org/abs/2309.06657)
    and TRL's DPOTrainer(loss_type="hinge").

        h = (S_w − S_w^ref) − (S_l − S_l^ref)
        L = max(0, δ − h)

    δ is the margin in (summed) log-ratio units. SLiC-HF applies it to the policy's raw
    log-likelihoods, without a reference; we use log-ratios, like RSO and TRL. TRL writes
    relu(1 − β h) = β·relu(1/β − h): the same loss with δ = 1/β, identical zero set, gradient scaled
    by β. The default δ = 10 is TRL's default β = 0.1.
    Rewards: the plain log-ratios S − S^ref (β-free: δ is a margin, not a scale).
    """
    chosen_logratio, rejected_logratio = _logratios(logps, "hinge")
    h = chosen_logratio - rejected_logratio
    losses = torch.relu(delta - h)
    return ObjectiveOutput(losses, chosen_logratio.detach(), rejected_logratio.detach())


# ------------------------------------------------------------------------------------- SimPO
@dataclass
class SimPOConfig:
    name: str = "simpo"
    beta: float = 2.0
    gamma: float = 0.5
    nll_weight: float = 0.0


@register("simpo", SimPOConfig, uses_reference=False)
def simpo(logps: SequenceLogps, *, beta: float, gamma: float, nll_weight: float = 0.0) -> ObjectiveOutput:
    """Simple Preference Optimization (Meng et al., 2024, https://arxiv.org/abs/2405.14734).

        L = −log σ(β·S_w/n_w − β·S_l/n_l − γ) + nll_weight·(−S_w/n_w)

    γ is the ABSOLUTE target reward margin of the paper. The official code (princeton-nlp/SimPO)
    takes gamma_beta_ratio = γ/β instead: γ = gamma_beta_ratio·β (its defaults β = 2.0,
    gamma_beta_ratio = 0.25 give our γ = 0.5). Its optional SFT term is `sft_weight` (default 0),
    our `nll_weight`, as the mean token NLL of the chosen completion.
    Beware: TRL's CPOTrainer(loss_type="simpo") keeps cpo_alpha = 1.0 by default, i.e. it trains
    CPO-SimPO (SimPO + a full-weight NLL term), not SimPO; pass cpo_alpha=0 there to compare.
    Rewards: β·S/n, as the official code logs them.
    """
    chosen_avg = logps.chosen / logps.chosen_tokens  # (B,)
    rejected_avg = logps.rejected / logps.rejected_tokens  # (B,)
    losses = -F.logsigmoid(beta * chosen_avg - beta * rejected_avg - gamma) - nll_weight * chosen_avg
    return ObjectiveOutput(losses, (beta * chosen_avg).detach(), (beta * rejected_avg).detach())


# --------------------------------------------------------------------------------------- CPO
@dataclass
class CPOConfig:
    name: str = "cpo"
    beta: float = 0.1
    nll_weight: float = 1.0


@register("cpo", CPOConfig, uses_reference=False)
def cpo(logps: SequenceLogps, *, beta: float, nll_weight: float = 1.0) -> ObjectiveOutput:
    """Contrastive Preference Optimization (Xu et al., 2024, https://arxiv.org/abs/2401.08417; eq. 3 + NLL).

        L = −log σ(β(S_w − S_l)) + nll_weight·(−S_w/n_w)

    DPO with a uniform reference (the reference terms dropped) plus a behaviour-cloning NLL on the
    chosen completion; `nll_weight` is TRL's `cpo_alpha`. The NLL is the mean token NLL of the chosen
    completion, as in TRL; TRL averages tokens over the whole batch, we average per example (the
    batch mean then weights pairs equally rather than by length).
    Rewards: β·S, as TRL logs them.
    """
    logits = logps.chosen - logps.rejected
    nll = -logps.chosen / logps.chosen_tokens  # (B,)
    losses = -F.logsigmoid(beta * logits) + nll_weight * nll
    return ObjectiveOutput(losses, (beta * logps.chosen).detach(), (beta * logps.rejected).detach())


# -------------------------------------------------------------------------------------- ORPO
def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate over the whole range (Mächler 2012, "Accurately computing
    log(1 − exp(−|a|))").

    log(−expm1(x)) near 0, log1p(−exp(x)) below −ln 2. x is first clamped to ≤ −eps of its dtype
    (1 − exp(x) cannot be resolved more finely), so x → 0 gives a large finite value, ≈ log(eps),
    instead of −inf. Each branch sees only inputs from its own side of −ln 2: torch.where
    back-propagates through both branches, and an inf in the unused one would turn into nan.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = x > -math.log(2)
    upper = torch.where(near_zero, x, -math.log(2))
    lower = torch.where(near_zero, -math.log(2), x)
    return torch.where(near_zero, torch.log(-torch.expm1(upper)), torch.log1p(-torch.exp(lower)))


@dataclass
class ORPOConfig:
    name: str = "orpo"
    odds_ratio_weight: float = 0.1


@register("orpo", ORPOConfig, uses_reference=False)
def orpo(logps: SequenceLogps, *, odds_ratio_weight: float) -> ObjectiveOutput:
    """Odds Ratio Preference Optimization (Hong et al., 2024, https://arxiv.org/abs/2403.07691).

        a = S/n                                   (log of the per-token geometric-mean probability)
        log odds(y) = a − log(1 − exp(a))
        L = −S_w/n_w − λ·log σ(log odds_w − log odds_l)

    λ = `odds_ratio_weight` (TRL's `beta`, the official code's `alpha`). log(1 − exp(a)) goes
    through `log1mexp`: the official code and TRL use log1p(−exp(a)), which is −inf (and nan
    gradients) when a rounds to 0. The NLL term is the mean token NLL of the chosen completion per
    example; TRL and the official code average tokens over the whole batch.
    Rewards: λ·a, as TRL logs them.
    """
    chosen_avg = logps.chosen / logps.chosen_tokens  # (B,)
    rejected_avg = logps.rejected / logps.rejected_tokens  # (B,)
    log_odds = (chosen_avg - log1mexp(chosen_avg)) - (rejected_avg - log1mexp(rejected_avg))
    losses = -chosen_avg - odds_ratio_weight * F.logsigmoid(log_odds)
    return ObjectiveOutput(
        losses, (odds_ratio_weight * chosen_avg).detach(), (odds_ratio_weight * rejected_avg).detach()
    )


# --------------------------------------------------------------------------------------- KTO
@dataclass
class KTOConfig:
    name: str = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@register("kto", KTOConfig, uses_reference=True, needs_kl_batch=True, unpaired=True)
def kto(
    logps: SequenceLogps, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> ObjectiveOutput:
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024, https://arxiv.org/abs/2402.01306, eq. 7).

        z0  = max(0, mean(S_kl − S_kl^ref))       (mismatched prompt/completion pairs; no gradient)
        r   = S − S^ref
        L   = λ_D·(1 − σ(β(r_w − z0))) + λ_U·(1 − σ(β(z0 − r_l)))

    KTO learns from unpaired examples. On unpaired data (`paired` False) the losses are one per
    example, desirable ones first, exactly as TRL's KTOTrainer computes them. On pairs, each pair is
    split into a desirable (chosen) and an undesirable (rejected) example and the two terms are summed
    into one per-pair loss (deviation: TRL averages over the 2B examples, so our batch mean is 2×
    TRL's, same gradient direction; the sum over the batch is the same). The KL baseline z0 comes
    from mismatched (prompt_i, completion_j) sequences and is detached, as in the paper and TRL.
    λ_D = `desirable_weight`, λ_U = `undesirable_weight`. Rewards: β·r, as TRL logs them.
    """
    if logps.kl_policy is None or logps.kl_reference is None:
        raise ValueError("kto needs the KL batch (kl_policy/kl_reference), got None")
    chosen_logratio, rejected_logratio = _logratios(logps, "kto")
    z0 = (logps.kl_policy - logps.kl_reference).mean().clamp(min=0).detach()  # scalar
    desirable = 1 - torch.sigmoid(beta * (chosen_logratio - z0))
    undesirable = 1 - torch.sigmoid(beta * (z0 - rejected_logratio))
    losses = _per_example(logps, desirable_weight * desirable, undesirable_weight * undesirable)
    return ObjectiveOutput(losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())


def _per_example(logps: SequenceLogps, desirable: Tensor, undesirable: Tensor) -> Tensor:
    """KTO-style losses as the batch holds them: a pair's two terms summed into one loss, or on unpaired data one
    loss per example, desirable ones first (TRL's order)."""
    return desirable + undesirable if logps.paired else torch.cat([desirable, undesirable])


# ---------------------------------------------------------------- TRL's other DPO loss types
# Each of these is one `loss_type` of TRL 1.16's DPOTrainer (trl/trainer/dpo_trainer.py, _compute_loss), with
# TRL's `beta` and `label_smoothing` under the same names. tests/test_trl_conformance.py runs TRL's own loss code on
# the same per-sequence log-probs and checks value and gradient. r = S − S^ref (per completion), h = r_w − r_l.
@dataclass
class NCAPairConfig:
    name: str = "nca_pair"
    beta: float = 0.1


@register("nca_pair", NCAPairConfig, uses_reference=True)
def nca_pair(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Noise Contrastive Alignment, pairwise (Chen et al., 2024, https://arxiv.org/abs/2402.05369, NCA for K = 2).

        L = −log σ(β r_w) − ½ log σ(−β r_w) − ½ log σ(−β r_l)

    Each completion's reward is judged on its own (not only their difference), so the chosen likelihood
    is pushed up rather than merely above the rejected one. Rewards: β r, as TRL logs them.
    """
    r_w, r_l = _logratios(logps, "nca_pair")
    losses = -F.logsigmoid(beta * r_w) - 0.5 * F.logsigmoid(-beta * r_w) - 0.5 * F.logsigmoid(-beta * r_l)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class EXOPairConfig:
    name: str = "exo_pair"
    beta: float = 0.1
    label_smoothing: float = 1e-3


@register("exo_pair", EXOPairConfig, uses_reference=True)
def exo_pair(logps: SequenceLogps, *, beta: float, label_smoothing: float) -> ObjectiveOutput:
    """EXO, preference form (Ji et al., 2024, https://arxiv.org/abs/2402.00856, eq. 16, K = 2): the reverse KL from
    the policy's pair distribution q = softmax(β r) over {chosen, rejected} to the labels p = (1 − ε, ε).

        q_w = σ(β h),  q_l = σ(−β h)
        L = q_w (log q_w − log(1 − ε)) + q_l (log q_l − log ε)

    ε = `label_smoothing` must be > 0 (log ε); the paper's default 1e-3. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "exo_pair")
    z = beta * (r_w - r_l)
    eps = torch.as_tensor(label_smoothing, dtype=z.dtype, device=z.device)
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps)))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class RobustConfig:
    name: str = "robust"
    beta: float = 0.1
    label_smoothing: float = 0.1


@register("robust", RobustConfig, uses_reference=True)
def robust(logps: SequenceLogps, *, beta: float, label_smoothing: float) -> ObjectiveOutput:
    """Robust DPO (Chowdhury et al., 2024, https://arxiv.org/abs/2403.00409, eq. 8): DPO made unbiased under labels
    flipped with probability ε.

        L = ((1 − ε)·(−log σ(β h)) − ε·(−log σ(−β h))) / (1 − 2ε)

    Unlike cDPO (dpo's label_smoothing) the flipped term is subtracted. ε = `label_smoothing` in [0, 0.5); 0.1 as
    in the paper's experiments. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "robust")
    z = beta * (r_w - r_l)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class BCOPairConfig:
    name: str = "bco_pair"
    beta: float = 0.1


@register("bco_pair", BCOPairConfig, uses_reference=True)
def bco_pair(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Binary Classifier Optimization on pairs (Jung et al., 2024, https://arxiv.org/abs/2404.04656), as TRL 1.16
    computes it: chosen completions classified as good, rejected as bad, by the implicit reward β r.

        L = −log σ(β r_w) − log σ(−β r_l)

    Deviation from the paper, following TRL 1.16: no reward shift δ (the paper subtracts a running mean of the
    rewards; TRL 1.16's bco_pair has none), so the loss keeps no state across batches and a resumed cell equals an
    uninterrupted one. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "bco_pair")
    losses = -F.logsigmoid(beta * r_w) - F.logsigmoid(-beta * r_l)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class SPPOHardConfig:
    name: str = "sppo_hard"
    beta: float = 0.1


@register("sppo_hard", SPPOHardConfig, uses_reference=True)
def sppo_hard(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Self-Play Preference Optimization with hard win probabilities (Wu et al., 2024,
    https://arxiv.org/abs/2405.00675, eq. 4.7 with P = 1 for the chosen and 0 for the rejected completion).

        L = (r_w − 1/(2β))² + (r_l + 1/(2β))²

    The paper estimates P with a preference model outside the trainer; the hard form is TRL's. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "sppo_hard")
    losses = (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class AOTConfig:
    name: str = "aot"
    beta: float = 0.1
    label_smoothing: float = 0.0


@register("aot", AOTConfig, uses_reference=True)
def aot(logps: SequenceLogps, *, beta: float, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Alignment via Optimal Transport, paired (Melnyk et al., 2024, https://arxiv.org/abs/2406.05882): DPO's logistic
    loss on the batch's SORTED policy margins against its sorted reference margins (first-order stochastic
    dominance of the policy's margin distribution over the reference's).

        u = sort_batch(S_w − S_l),  v = sort_batch(S_w^ref − S_l^ref)
        L_i = −(1 − ε) log σ(β (u_i − v_i)) − ε log σ(−β (u_i − v_i))

    Batch-dependent: loss i belongs to the i-th smallest margin, not to pair i, and the sort runs over the pairs one
    process holds in one micro-batch (TRL: one device's micro-batch); only the batch mean is meaningful. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "aot")
    u, _ = torch.sort(logps.chosen - logps.rejected, dim=0)
    v, _ = torch.sort(logps.ref_chosen - logps.ref_rejected, dim=0)
    losses = _smoothed_logistic(beta * (u - v), label_smoothing)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class AOTUnpairedConfig:
    name: str = "aot_unpaired"
    beta: float = 0.1
    label_smoothing: float = 0.0


@register("aot_unpaired", AOTUnpairedConfig, uses_reference=True)
def aot_unpaired(logps: SequenceLogps, *, beta: float, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Alignment via Optimal Transport, unpaired form (Melnyk et al., 2024, https://arxiv.org/abs/2406.05882): the
    sorted chosen log-ratios against the sorted rejected ones, each sorted over the batch on its own.

        L_i = −(1 − ε) log σ(β (sort(r_w)_i − sort(r_l)_i)) − ε log σ(−β (…))

    Batch-dependent as `aot`. It still trains on ablate's pairs (both sides of each pair are in the batch).
    Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "aot_unpaired")
    losses = _smoothed_logistic(beta * (torch.sort(r_w, dim=0)[0] - torch.sort(r_l, dim=0)[0]), label_smoothing)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """−(1 − ε) log σ(z) − ε log σ(−z): the logistic loss with labels flipped at rate ε (cDPO's form)."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@dataclass
class APOZeroConfig:
    name: str = "apo_zero"
    beta: float = 0.1


@register("apo_zero", APOZeroConfig, uses_reference=True)
def apo_zero(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Anchored Preference Optimization, zero (D'Oosterlinck et al., 2024, https://arxiv.org/abs/2408.06266, eq. 7):
    for chosen completions better than the model's own outputs — raise the chosen likelihood, lower the rejected.

        L = (1 − σ(β r_w)) + σ(β r_l)

    Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "apo_zero")
    losses = 1 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class APODownConfig:
    name: str = "apo_down"
    beta: float = 0.1


@register("apo_down", APODownConfig, uses_reference=True)
def apo_down(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Anchored Preference Optimization, down (D'Oosterlinck et al., 2024, https://arxiv.org/abs/2408.06266, eq. 8):
    for chosen completions worse than the model's own — lower both likelihoods, the rejected one more.

        L = σ(β r_w) + (1 − σ(β (r_w − r_l)))

    Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "apo_down")
    losses = torch.sigmoid(beta * r_w) + 1 - torch.sigmoid(beta * (r_w - r_l))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class DiscoPOPConfig:
    name: str = "discopop"
    beta: float = 0.1
    tau: float = 0.05


@register("discopop", DiscoPOPConfig, uses_reference=True)
def discopop(logps: SequenceLogps, *, beta: float, tau: float) -> ObjectiveOutput:
    """DiscoPOP, the log-ratio modulated loss discovered by LLM search (Chris Lu et al., 2024,
    https://arxiv.org/abs/2406.08414, eq. 5): a blend of the logistic (DPO) and the exponential loss, mixed by the
    sigmoid of the margin.

        ρ = β h,  m = σ(ρ / τ)
        L = (1 − m)·(−log σ(ρ)) + m·exp(−ρ)

    τ = `tau` (TRL's `discopop_tau`), the paper's 0.05. Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "discopop")
    rho = beta * (r_w - r_l)
    m = torch.sigmoid(rho / tau)
    losses = (1 - m) * -F.logsigmoid(rho) + m * torch.exp(-rho)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class SigmoidNormConfig:
    name: str = "sigmoid_norm"
    beta: float = 0.1


@register("sigmoid_norm", SigmoidNormConfig, uses_reference=True)
def sigmoid_norm(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Length-normalised DPO (TRL's loss_type="sigmoid_norm"; the per-token log-ratio of R-DPO/SimPO-style length
    control, Park et al., 2024, https://arxiv.org/abs/2403.19159, without R-DPO's length penalty):

        L = −log σ(β (r_w/n_w − r_l/n_l))

    β then scales a per-token log-ratio: comparable β values are larger than DPO's. Rewards: β r/n.
    """
    r_w, r_l = _logratios(logps, "sigmoid_norm")
    r_w, r_l = r_w / logps.chosen_tokens, r_l / logps.rejected_tokens
    losses = -F.logsigmoid(beta * (r_w - r_l))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


@dataclass
class SFTConfig:
    name: str = "sft"


@register("sft", SFTConfig, uses_reference=False)
def sft(logps: SequenceLogps) -> ObjectiveOutput:
    """Supervised fine-tuning on the chosen completions (TRL's loss_type="sft"): the mean token NLL of the batch's
    chosen completions — a baseline arm, and the NLL term of RPO and MPO.

        L = −Σ_i S_w,i / Σ_i n_w,i      (over the micro-batch)

    Batch-dependent, as TRL's: tokens are averaged over the micro-batch, so a long completion weighs more than a
    short one. As per-example losses: L_i = −B·S_w,i / Σ n_w, whose mean is that value. (cpo's and simpo's NLL
    terms average per example instead.) Rewards: S/n, the per-token log-prob.
    """
    tokens = logps.chosen_tokens.sum()
    losses = -len(logps.chosen) * logps.chosen / tokens
    return ObjectiveOutput(losses, (logps.chosen / logps.chosen_tokens).detach(),
                           (logps.rejected / logps.rejected_tokens).detach())


# ----------------------------------------------------------------------- f-divergence DPO
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class FDPOConfig:
    name: str = "fdpo"
    beta: float = 0.1
    divergence: str = "js_divergence"
    alpha: float = 0.5


@register("fdpo", FDPOConfig, uses_reference=True)
def fdpo(logps: SequenceLogps, *, beta: float, divergence: str, alpha: float) -> ObjectiveOutput:
    """f-DPO: DPO under another divergence from the reference (Wang et al., 2023, https://arxiv.org/abs/2309.16240,
    eq. 8): the log-ratio r is replaced by f'(u) of the divergence, u = π/π_ref = exp(r).

        s = f'(exp r):  reverse_kl r;  forward_kl 1 − exp(−r);  js_divergence log 2 + log σ(r);
                        alpha_divergence (exp((α − 1) r) − 1)/(α − 1)      (r at α = 1)
        L = −log σ(β (s_w − s_l))

    As TRL's DPOTrainer(f_divergence_type=..., f_alpha_divergence_coef=α) computes it: constants of f' cancel in the
    difference, and TRL's α is 1 − the paper's α (α → 1 is reverse KL, plain DPO); (α − 1) r is clamped at 80 before
    exp, as TRL does. Rewards: β r (TRL logs the plain log-ratios too).
    """
    r_w, r_l = _logratios(logps, "fdpo")
    s_w, s_l = _f_prime(r_w, divergence, alpha), _f_prime(r_l, divergence, alpha)
    losses = -F.logsigmoid(beta * (s_w - s_l))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


def _f_prime(r: Tensor, divergence: str, alpha: float) -> Tensor:
    if divergence == "reverse_kl" or (divergence == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return r
    if divergence == "forward_kl":
        return 1 - torch.exp(-r)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(r)
    if divergence == "alpha_divergence":
        return (torch.exp(((alpha - 1.0) * r).clamp(max=80.0)) - 1.0) / (alpha - 1.0)
    raise ValueError(f"objective.divergence = {divergence!r}: one of {', '.join(F_DIVERGENCES)}")


# ---------------------------------------------------------------------------------- AlphaPO
@dataclass
class AlphaPOConfig:
    name: str = "alphapo"
    beta: float = 2.0
    gamma: float = 0.5
    alpha: float = 0.25


@register("alphapo", AlphaPOConfig, uses_reference=False)
def alphapo(logps: SequenceLogps, *, beta: float, gamma: float, alpha: float) -> ObjectiveOutput:
    """AlphaPO: SimPO with a reward of another shape (Gupta et al., 2025, https://arxiv.org/abs/2501.03884).

        a = S/n,  r = (1 − exp(−α a))/α        (= (1 − p^(−α))/α for the per-token geometric-mean probability p)
        L = −log σ(β (r_w − r_l) − γ)

    α → 0 is SimPO (r → a). As TRL's CPOTrainer(loss_type="alphapo") computes it (loss_type simpo, cpo_alpha 0,
    length-normalised log-probs), with γ absolute as in ablate's simpo (TRL's simpo_gamma). Rewards: β r.
    """
    chosen_avg = logps.chosen / logps.chosen_tokens
    rejected_avg = logps.rejected / logps.rejected_tokens
    r_w, r_l = _alpha_reward(chosen_avg, alpha), _alpha_reward(rejected_avg, alpha)
    losses = -F.logsigmoid(beta * (r_w - r_l) - gamma)
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


def _alpha_reward(average_logp: Tensor, alpha: float) -> Tensor:
    return average_logp if alpha == 0 else (1 - torch.exp(-alpha * average_logp)) / alpha


# ------------------------------------------------------------------------------------ LD-DPO
@dataclass
class LDDPOConfig:
    name: str = "ld_dpo"
    beta: float = 0.1
    ld_alpha: float = 0.5


@register("ld_dpo", LDDPOConfig, uses_reference=True, sequence_parts=("tail",))
def ld_dpo(logps: SequenceLogps, *, beta: float, ld_alpha: float) -> ObjectiveOutput:
    """Length-desensitised DPO (Liu et al., 2024, https://arxiv.org/abs/2409.06411): the log-probs of a pair's
    completion tokens past its shared length count α times, for the policy and the reference alike.

        ℓ = min(n_w, n_l),   Ŝ = S_{≤ℓ} + α·S_{>ℓ}   (tokens past the pair's shared length weighted by α)
        h = (Ŝ_w − Ŝ_w^ref) − (Ŝ_l − Ŝ_l^ref)
        L = −log σ(β h)

    As TRL 1.16's DPOTrainer(ld_alpha=α) computes it (loss_type sigmoid): α = 1 is DPO, α = 0 drops the longer
    completion's excess tokens. Rewards: β·(Ŝ − Ŝ^ref).
    """
    if logps.chosen_tail is None or logps.ref_chosen_tail is None:
        raise ValueError("ld_dpo needs the completions' tail log-probs (SequenceLogps.chosen_tail and ref_*_tail)")
    r_w = _desensitised(logps.chosen, logps.chosen_tail, ld_alpha) - _desensitised(
        logps.ref_chosen, logps.ref_chosen_tail, ld_alpha)
    r_l = _desensitised(logps.rejected, logps.rejected_tail, ld_alpha) - _desensitised(
        logps.ref_rejected, logps.ref_rejected_tail, ld_alpha)
    losses = -F.logsigmoid(beta * (r_w - r_l))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


def _desensitised(total: Tensor, tail: Tensor, alpha: float) -> Tensor:
    """S_{≤ℓ} + α·S_{>ℓ} from the sum S and the tail S_{>ℓ}."""
    return total - (1 - alpha) * tail


# --------------------------------------------------------------------------------------- WPO
@dataclass
class WPOConfig:
    name: str = "wpo"
    beta: float = 0.1


@register("wpo", WPOConfig, uses_reference=True, sequence_parts=("wpo_weight",))
def wpo(logps: SequenceLogps, *, beta: float) -> ObjectiveOutput:
    """Weighted Preference Optimization (Zhou et al., 2024, https://arxiv.org/abs/2406.11827, eq. 2): DPO with each
    pair weighted by how likely the current policy is to produce it, as if the data were sampled on-policy.

        w(y) = exp( (1/n) Σ_t [log π(y_t) − log Σ_v π(v)²] )   (no gradient through w)
        h = (S_w − S_w^ref) − (S_l − S_l^ref)
        L = −w(y_w)·w(y_l)·log σ(β h)

    As TRL 1.16's DPOTrainer(use_weighting=True) computes it (loss_type sigmoid), with no clamp on w (earlier TRL
    releases clamped w_w·w_l at 1; 1.16 does not). Rewards: β·(S − S^ref), as dpo.
    """
    if logps.chosen_wpo_weight is None or logps.rejected_wpo_weight is None:
        raise ValueError("wpo needs the policy's per-sequence weights (SequenceLogps.chosen_wpo_weight)")
    r_w, r_l = _logratios(logps, "wpo")
    losses = -F.logsigmoid(beta * (r_w - r_l)) * logps.chosen_wpo_weight * logps.rejected_wpo_weight
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


# ------------------------------------------------------------------------ APO-zero, unpaired
@dataclass
class APOZeroUnpairedConfig:
    name: str = "apo_zero_unpaired"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@register("apo_zero_unpaired", APOZeroUnpairedConfig, uses_reference=True, unpaired=True)
def apo_zero_unpaired(logps: SequenceLogps, *, beta: float, desirable_weight: float = 1.0,
                      undesirable_weight: float = 1.0) -> ObjectiveOutput:
    """APO-zero for unpaired labelled completions (D'Oosterlinck et al., 2024, https://arxiv.org/abs/2408.06266,
    eq. 7 per example), as TRL's KTOTrainer(loss_type="apo_zero_unpaired") computes it: KTO without its KL baseline.

        L = λ_D·(1 − σ(β r_w))   for a desirable completion,   λ_U·σ(β r_l)   for an undesirable one

    On unpaired data one loss per example, desirable ones first (as kto); on pairs the two terms of a pair are summed
    into one loss, as kto does (the batch mean is then 2× TRL's over the 2B examples). Rewards: β r.
    """
    r_w, r_l = _logratios(logps, "apo_zero_unpaired")
    losses = _per_example(logps, desirable_weight * (1 - torch.sigmoid(beta * r_w)),
                          undesirable_weight * torch.sigmoid(beta * r_l))
    return ObjectiveOutput(losses, (beta * r_w).detach(), (beta * r_l).detach())


# ------------------------------------------------------------------------- weighted combinations
@dataclass
class ComboConfig:
    name: str = "combo"
    terms: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "dpo", "weight": 1.0}])


@dataclass
class MPOConfig:
    name: str = "mpo"
    terms: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "dpo", "weight": 0.8}, {"name": "bco_pair", "weight": 0.2}, {"name": "sft", "weight": 1.0}])


@dataclass
class RPOConfig:
    name: str = "rpo"
    terms: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "dpo", "weight": 1.0},
                                                                 {"name": "sft", "weight": 1.0}])


def combination(logps: SequenceLogps, *, terms: list) -> ObjectiveOutput:
    """A weighted sum of objectives, one arm like any other (TRL's `loss_type` list with `loss_weights`).

        L = Σ_t w_t · L_t

    `terms`: [{name, weight, <the term's own hyper-parameters>}]; a hyper-parameter left out takes the term's
    default (its conf/objective/<name>.yaml). Since every term's batch mean is linear, the batch mean of L is TRL's
    Σ_t w_t·mean(L_t). Presets: `mpo` (Mixed Preference Optimization, Wang et al., 2024,
    https://arxiv.org/abs/2411.10442: dpo 0.8 + bco_pair 0.2 + sft 1.0, TRL's recipe) and `rpo` (Iterative
    Reasoning Preference Optimization, Pang et al., 2024, https://arxiv.org/abs/2404.19733: dpo + the chosen
    completions' NLL, α = 1 as in the paper; TRL's NLL is the batch token mean, its `sft`). Rewards: the first
    term's. The reference is computed when some term uses it (Objective.bind).
    """
    total, first = None, None
    for term in terms:
        out = get_objective(term["name"])(logps, **term_settings(term))
        total = term["weight"] * out.losses if total is None else total + term["weight"] * out.losses
        first = first or out
    return ObjectiveOutput(total, first.chosen_rewards, first.rejected_rewards)


def term_settings(term) -> dict:
    """A combination term's hyper-parameters: the term objective's defaults, overridden by the term's own."""
    objective = get_objective(term["name"])
    base = {k: v for k, v in dataclasses.asdict(objective.schema()).items() if k != "name"}
    return base | {k: v for k, v in dict(term).items() if k not in ("name", "weight")}


def term_problems(terms, key: str = "objective.terms") -> list[str]:
    """What is wrong with a combination's terms, each naming its key (planning refuses the cell with these)."""
    if not isinstance(terms, list | tuple) or not terms:
        return [f"{key}: a non-empty list of {{name, weight, ...}}"]
    problems = []
    for i, term in enumerate(terms):
        where = f"{key}[{i}]"
        if not isinstance(term, dict) or "name" not in term or "weight" not in term:
            problems.append(f"{where} = {term!r}: a mapping with name and weight")
            continue
        name, weight = term["name"], term["weight"]
        objective = OBJECTIVES.get(name)
        if objective is None:
            problems.append(f"{where}.name = {name!r}: unknown; known: {', '.join(sorted(OBJECTIVES))}")
            continue
        if objective.combination or objective.needs_kl_batch or objective.unpaired:
            problems.append(f"{where}.name = {name!r}: a term is a pairwise objective (not a combination, not "
                            f"kto)")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            problems.append(f"{where}.weight = {weight!r}: a finite number >= 0")
        unknown = sorted(set(term) - {"name", "weight"} - set(objective.hyperparameters))
        if unknown:
            problems.append(f"{where}: {', '.join(unknown)} not a parameter of {name} (it takes "
                            f"{', '.join(objective.hyperparameters) or 'none'})")
    weights = [t.get("weight") for t in terms if isinstance(t, dict)]
    if weights and all(isinstance(w, int | float) and w == 0 for w in weights):
        problems.append(f"{key}: every weight is 0 (nothing would be trained)")
    return problems


for _name, _schema in (("combo", ComboConfig), ("mpo", MPOConfig), ("rpo", RPOConfig)):
    register(_name, _schema, uses_reference=True, combination=True)(combination)


# ------------------------------------------------------------------------------ provenance
def formula(loss: Callable) -> str:
    """The formula block of a loss's docstring (its indented lines), as one line per formula line."""
    lines = inspect.cleandoc(loss.__doc__ or "").splitlines()
    return "\n".join(line.strip() for line in lines if line.startswith("    ") and line.strip())


def provenance(settings) -> dict:
    """What a cell's objective is, for its objective.json, the report and W&B: name, settings, the formula its
    docstring states, and a fingerprint of the source of every function that computes it (a combination: its own
    and its terms'), so a report can never describe one loss while another ran."""
    settings = dict(settings)
    objective = get_objective(settings["name"])
    functions = [objective.loss]
    record = {"objective": objective.name, "settings": {k: v for k, v in settings.items() if k != "name"},
              "formula": formula(objective.loss)}
    if objective.combination:
        record["terms"] = []
        for term in settings["terms"]:
            functions.append(get_objective(term["name"]).loss)
            record["terms"].append({"name": term["name"], "weight": term["weight"], "settings": term_settings(term),
                                    "formula": formula(get_objective(term["name"]).loss)})
    source = "".join(inspect.getsource(f) for f in dict.fromkeys(functions))
    record["source_sha256"] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return record


# ------------------------------------------------------------------------------ Hydra schemas
def register_objective_schemas(cs: ConfigStore) -> None:
    """Store every objective's schema as objective/schema_<name>, the node conf/objective/<name>.yaml
    pulls in through its defaults list (types and keys then checked at compose time)."""
    for objective in OBJECTIVES.values():
        cs.store(group="objective", name=f"schema_{objective.name}", node=objective.schema)
