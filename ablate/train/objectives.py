"""Preference objectives: one pure function per objective, and the registry that names them.

Every objective maps the same record of sequence log-probs to per-example losses and the rewards
it logs. Nothing else differs between arms of an ablation: the trainer, data and held-out metrics
are shared (docs/ARCHITECTURE.md §4). Hyper-parameters are keyword-only and named as in the paper; each
objective's config schema is a dataclass registered next to its function, so the registry, the
Hydra schemas and conf/objective/*.yaml cannot drift apart (tests/test_objectives.py checks it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
             unpaired: bool = False):
    def wrap(loss: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        OBJECTIVES[name] = Objective(name, loss, schema, uses_reference, needs_kl_batch, unpaired)
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
    if logps.paired:
        losses = desirable_weight * desirable + undesirable_weight * undesirable
    else:
        losses = torch.cat([desirable_weight * desirable, undesirable_weight * undesirable])
    return ObjectiveOutput(losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())


# ------------------------------------------------------------------------------ Hydra schemas
def register_objective_schemas(cs: ConfigStore) -> None:
    """Store every objective's schema as objective/schema_<name>, the node conf/objective/<name>.yaml
    pulls in through its defaults list (types and keys then checked at compose time)."""
    for objective in OBJECTIVES.values():
        cs.store(group="objective", name=f"schema_{objective.name}", node=objective.schema)
