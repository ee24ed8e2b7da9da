"""Objectives: hand-derived values, invariants, gradients, and registry ↔ schema ↔ YAML consistency.

Expected values are derived by hand in each test's docstring from the formula in the objective's
own docstring (S = summed completion log-prob, n = completion tokens, w = chosen, l = rejected,
ref = reference), then compared with assert_close. Inputs are float64 so the hand arithmetic, not
float32 rounding, decides the comparison.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch.testing import assert_close

from ablate.train.objectives import OBJECTIVES, SequenceLogps, get_objective, log1mexp, register_objective_schemas

CONF_OBJECTIVE = Path(__file__).resolve().parents[1] / "conf" / "objective"


def t(*values: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def defaults(name: str) -> dict:
    """The schema's default hyper-parameters, without `name`."""
    return {k: v for k, v in dataclasses.asdict(get_objective(name).schema()).items() if k != "name"}


# ------------------------------------------------------------------------- hand-derived values
def test_dpo_hand_value():
    """h = (−1 − −2) − (−3 − −2) = 2; β = 0.1: L = −log σ(0.2) = log(1 + e^−0.2) = 0.5981.
    Rewards β(S − S^ref) = 0.1, −0.1. cDPO ε = 0.25: L = −0.75 log σ(0.2) − 0.25 log σ(−0.2)
    = 0.75·0.5981 + 0.25·0.7981 = 0.6481."""
    logps = SequenceLogps(t(-1.0), t(-3.0), t(1.0), t(1.0), ref_chosen=t(-2.0), ref_rejected=t(-2.0))
    out = get_objective("dpo")(logps, beta=0.1)
    assert_close(out.losses, t(math.log1p(math.exp(-0.2))))
    assert_close(out.chosen_rewards, t(0.1))
    assert_close(out.rejected_rewards, t(-0.1))
    smoothed = get_objective("dpo")(logps, beta=0.1, label_smoothing=0.25)
    assert_close(smoothed.losses, t(0.75 * math.log1p(math.exp(-0.2)) + 0.25 * math.log1p(math.exp(0.2))))


def test_ipo_hand_value():
    """τ = 0.5, so the target 1/(2τ) = 1.
    Pair 1: (−4 − −6)/2 − (−9 − −6)/3 = 1 − (−1) = 2 → L = (2 − 1)² = 1; rewards τ·1 = 0.5, τ·(−1) = −0.5.
    Pair 2: (−5 − −6)/1 − (−6 − −6)/4 = 1 → L = 0 (h on target); rewards 0.5, 0."""
    logps = SequenceLogps(
        chosen=t(-4.0, -5.0),
        rejected=t(-9.0, -6.0),
        chosen_tokens=t(2.0, 1.0),
        rejected_tokens=t(3.0, 4.0),
        ref_chosen=t(-6.0, -6.0),
        ref_rejected=t(-6.0, -6.0),
    )
    out = get_objective("ipo")(logps, tau=0.5)
    assert_close(out.losses, t(1.0, 0.0))
    assert_close(out.chosen_rewards, t(0.5, 0.5))
    assert_close(out.rejected_rewards, t(-0.5, 0.0))


def test_ipo_uses_per_token_logratios():
    """Doubling every sequence (S, S^ref and n all ×2) leaves per-token log-ratios, hence IPO, unchanged;
    a summed-log-prob IPO would change."""
    base = SequenceLogps(t(-4.0), t(-9.0), t(2.0), t(3.0), ref_chosen=t(-6.0), ref_rejected=t(-6.0))
    doubled = SequenceLogps(t(-8.0), t(-18.0), t(4.0), t(6.0), ref_chosen=t(-12.0), ref_rejected=t(-12.0))
    assert_close(get_objective("ipo")(base, tau=0.1).losses, get_objective("ipo")(doubled, tau=0.1).losses)


def test_hinge_hand_value():
    """δ = 1; h = r_w − r_l with r = S − S^ref.
    Pair 1: r_w = 2, r_l = 0 → h = 2 ≥ δ → L = 0.
    Pair 2: r_w = 0.5, r_l = 0 → h = 0.5 → L = 1 − 0.5 = 0.5.
    Pair 3: r_w = 0, r_l = 1 → h = −1 → L = 1 − (−1) = 2.
    Rewards: the plain log-ratios (2, 0.5, 0) and (0, 0, 1)."""
    logps = SequenceLogps(
        chosen=t(-1.0, -2.5, -3.0),
        rejected=t(-5.0, -4.0, -2.0),
        chosen_tokens=t(1.0, 1.0, 1.0),
        rejected_tokens=t(1.0, 1.0, 1.0),
        ref_chosen=t(-3.0, -3.0, -3.0),
        ref_rejected=t(-5.0, -4.0, -3.0),
    )
    out = get_objective("hinge")(logps, delta=1.0)
    assert_close(out.losses, t(0.0, 0.5, 2.0))
    assert_close(out.chosen_rewards, t(2.0, 0.5, 0.0))
    assert_close(out.rejected_rewards, t(0.0, 0.0, 1.0))


def test_hinge_matches_trl_parameterisation():
    """TRL: relu(1 − β h) = β·relu(1/β − h). With δ = 1/β ours is TRL's divided by β.
    β = 0.1, h = 3: TRL 1 − 0.3 = 0.7; ours 10 − 3 = 7 = 0.7/0.1."""
    logps = SequenceLogps(t(0.0), t(0.0), t(1.0), t(1.0), ref_chosen=t(-3.0), ref_rejected=t(0.0))
    assert_close(get_objective("hinge")(logps, delta=10.0).losses, t(0.7 / 0.1))


def test_hinge_is_zero_beyond_margin():
    """h ≥ δ → loss 0 and no gradient (h = δ exactly and h = δ + 5)."""
    chosen = t(0.0, 5.0, requires_grad=True)
    logps = SequenceLogps(chosen, t(-2.0, -2.0), t(1.0, 1.0), t(1.0, 1.0), t(-1.0, -1.0), t(-1.0, -1.0))
    out = get_objective("hinge")(logps, delta=1.0)
    assert_close(out.losses, t(0.0, 0.0))
    out.losses.sum().backward()
    assert_close(chosen.grad[1], torch.tensor(0.0, dtype=torch.float64))


def test_simpo_hand_value():
    """β = 2, γ = 0.5. a_w = −2/4 = −0.5, a_l = −3/2 = −1.5.
    β a_w − β a_l − γ = −1 + 3 − 0.5 = 1.5 → L = −log σ(1.5) = log(1 + e^−1.5) = 0.2014.
    nll_weight = 1 adds −a_w = 0.5 → 0.7014. Rewards β·a = −1, −3."""
    logps = SequenceLogps(t(-2.0), t(-3.0), t(4.0), t(2.0))
    out = get_objective("simpo")(logps, beta=2.0, gamma=0.5, nll_weight=0.0)
    assert_close(out.losses, t(math.log1p(math.exp(-1.5))))
    assert_close(out.chosen_rewards, t(-1.0))
    assert_close(out.rejected_rewards, t(-3.0))
    with_nll = get_objective("simpo")(logps, beta=2.0, gamma=0.5, nll_weight=1.0)
    assert_close(with_nll.losses, t(math.log1p(math.exp(-1.5)) + 0.5))


def test_simpo_gamma_is_absolute():
    """The official code's gamma_beta_ratio = γ/β: β = 2, ratio 0.25 ⇔ γ = 0.5.
    Official: −log σ(β(a_w − a_l − ratio)) = −log σ(2(1 − 0.25)) = −log σ(1.5), as in the hand value above."""
    logps = SequenceLogps(t(-2.0), t(-3.0), t(4.0), t(2.0))
    official = -torch.nn.functional.logsigmoid(2.0 * ((t(-0.5) - t(-1.5)) - 0.25))
    assert_close(get_objective("simpo")(logps, beta=2.0, gamma=0.25 * 2.0).losses, official)


def test_cpo_hand_value():
    """β = 0.1, S_w = −10 (n_w = 5), S_l = −20: β(S_w − S_l) = 1 → −log σ(1) = log(1 + e^−1) = 0.3133.
    NLL = −S_w/n_w = 2; nll_weight = 1 → L = 2.3133; nll_weight = 0 → 0.3133. Rewards β·S = −1, −2."""
    logps = SequenceLogps(t(-10.0), t(-20.0), t(5.0), t(7.0))
    out = get_objective("cpo")(logps, beta=0.1, nll_weight=1.0)
    assert_close(out.losses, t(math.log1p(math.exp(-1.0)) + 2.0))
    assert_close(out.chosen_rewards, t(-1.0))
    assert_close(out.rejected_rewards, t(-2.0))
    no_nll = get_objective("cpo")(logps, beta=0.1, nll_weight=0.0)
    assert_close(no_nll.losses, t(math.log1p(math.exp(-1.0))))


def test_orpo_hand_value():
    """λ = 0.1. a_w = (2 log 0.5)/2 = log 0.5: odds 0.5/0.5 = 1, log odds_w = 0.
    a_l = (3 log 0.2)/3 = log 0.2: odds 0.2/0.8 = 1/4, log odds_l = −log 4.
    log OR = log 4 → −log σ(log 4) = −log(4/5) = log 1.25 = 0.2231.
    L = −a_w + λ·log 1.25 = 0.6931 + 0.0223 = 0.7155. Rewards λ·a = 0.1 log 0.5, 0.1 log 0.2."""
    logps = SequenceLogps(t(2 * math.log(0.5)), t(3 * math.log(0.2)), t(2.0), t(3.0))
    out = get_objective("orpo")(logps, odds_ratio_weight=0.1)
    assert_close(out.losses, t(math.log(2) + 0.1 * math.log(1.25)))
    assert_close(out.chosen_rewards, t(0.1 * math.log(0.5)))
    assert_close(out.rejected_rewards, t(0.1 * math.log(0.2)))


def test_new_trl_objectives_hand_values():
    """r_w = −1 − −2 = 1, r_l = −3 − −2 = −1, h = 2, β = 0.5 (n_w = 2, n_l = 1 tokens).
    nca_pair: −log σ(0.5) − ½ log σ(−0.5) − ½ log σ(0.5) = 0.4741 + 0.4870 + 0.2370 = 1.1981.
    sppo_hard: (1 − 1)² + (−1 + 1)² = 0 (both on target 1/(2β) = 1).
    apo_zero: 1 − σ(0.5) + σ(−0.5) = 2·0.3775 = 0.7551.
    sigmoid_norm: −log σ(0.5·(1/2 − −1/1)) = −log σ(0.75) = 0.3873.
    sft: −S_w/n_w with one pair = 1/2."""
    logps = SequenceLogps(t(-1.0), t(-3.0), t(2.0), t(1.0), ref_chosen=t(-2.0), ref_rejected=t(-2.0))
    lsig = lambda x: math.log(sigmoid(x))  # noqa: E731
    assert_close(get_objective("nca_pair")(logps, beta=0.5).losses, t(-lsig(0.5) - 0.5 * lsig(-0.5) - 0.5 * lsig(0.5)))
    assert_close(get_objective("sppo_hard")(logps, beta=0.5).losses, t(0.0))
    assert_close(get_objective("apo_zero")(logps, beta=0.5).losses, t(1 - sigmoid(0.5) + sigmoid(-0.5)))
    assert_close(get_objective("sigmoid_norm")(logps, beta=0.5).losses, t(-lsig(0.75)))
    assert_close(get_objective("sft")(logps).losses, t(0.5))
    combo = get_objective("combo")(logps, terms=[{"name": "apo_zero", "weight": 2.0, "beta": 0.5},
                                                 {"name": "sft", "weight": 0.5}])
    assert_close(combo.losses, t(2 * (1 - sigmoid(0.5) + sigmoid(-0.5)) + 0.25))


def test_kto_hand_value():
    """β = 0.1. KL batch: mean((−3 − −4), (−4 − −4)) = mean(1, 0) = 0.5 = z0 (positive, kept).
    r_w = −1 − −6.5 = 5.5 → β(r_w − z0) = 0.5; r_l = −7 − −2.5 = −4.5 → β(z0 − r_l) = 0.5.
    1 − σ(0.5) = 0.3775 each. λ_D = λ_U = 1: L = 2·0.3775 = 0.7551.
    λ_D = 2, λ_U = 0.5: L = 2.5·0.3775 = 0.9439. Rewards β·r = 0.55, −0.45."""
    logps = SequenceLogps(
        chosen=t(-1.0),
        rejected=t(-7.0),
        chosen_tokens=t(1.0),
        rejected_tokens=t(1.0),
        ref_chosen=t(-6.5),
        ref_rejected=t(-2.5),
        kl_policy=t(-3.0, -4.0),
        kl_reference=t(-4.0, -4.0),
    )
    one_minus_sigma = 1 - sigmoid(0.5)
    out = get_objective("kto")(logps, beta=0.1)
    assert_close(out.losses, t(2 * one_minus_sigma))
    assert_close(out.chosen_rewards, t(0.55))
    assert_close(out.rejected_rewards, t(-0.45))
    weighted = get_objective("kto")(logps, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert_close(weighted.losses, t(2.5 * one_minus_sigma))


# ---------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_dpo_is_ln2_when_policy_equals_reference(beta, label_smoothing):
    """policy = reference → h = 0 → −(1 − ε) log σ(0) − ε log σ(0) = ln 2 for any β, ε."""
    s = t(-3.0, -7.5)
    logps = SequenceLogps(s, s - 1, t(3.0, 5.0), t(4.0, 6.0), ref_chosen=s, ref_rejected=s - 1)
    out = get_objective("dpo")(logps, beta=beta, label_smoothing=label_smoothing)
    assert_close(out.losses, t(math.log(2), math.log(2)))


def test_simpo_is_ln2_with_equal_average_logps_and_no_margin():
    """γ = 0, a_w = −6/3 = a_l = −10/5 = −2 → −log σ(0) = ln 2 (whatever β)."""
    logps = SequenceLogps(t(-6.0), t(-10.0), t(3.0), t(5.0))
    out = get_objective("simpo")(logps, beta=2.5, gamma=0.0, nll_weight=0.0)
    assert_close(out.losses, t(math.log(2)))


def test_ipo_is_zero_on_target():
    """h = 1/(2τ) → L = 0 (τ = 0.1: h = 5 per token: chosen (−1 − −11)/2 = 5, rejected ratio 0)."""
    logps = SequenceLogps(t(-1.0), t(-4.0), t(2.0), t(3.0), ref_chosen=t(-11.0), ref_rejected=t(-4.0))
    assert_close(get_objective("ipo")(logps, tau=0.1).losses, t(0.0))


@pytest.mark.parametrize("x", [-1e-9, -1e-3, -0.5, -math.log(2), -1.0, -10.0, -50.0])
def test_log1mexp_matches_direct_formula(x):
    """log(1 − e^x) computed in float64 directly is accurate away from 0; log1mexp must agree."""
    assert_close(log1mexp(t(x)), t(math.log(-math.expm1(x))))


@pytest.mark.parametrize("s", [0.0, -1e-8, -1e-30])
def test_orpo_finite_as_average_logp_goes_to_zero(s):
    """a → 0 makes 1 − e^a → 0, so log odds → +∞ in exact arithmetic; log1mexp clamps it to a large
    finite value. Loss and gradients must stay finite for chosen and rejected (float32, the
    trainer's dtype, and float64)."""
    for dtype in (torch.float32, torch.float64):
        chosen = torch.tensor([s, -2.0], dtype=dtype, requires_grad=True)
        rejected = torch.tensor([-3.0, s], dtype=dtype, requires_grad=True)
        n = torch.tensor([4.0, 4.0], dtype=dtype)
        out = get_objective("orpo")(SequenceLogps(chosen, rejected, n, n), odds_ratio_weight=0.1)
        assert torch.isfinite(out.losses).all(), out.losses
        out.losses.sum().backward()
        assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_kto_reference_point_is_clamped_at_zero():
    """KL batch mean((−5 − −4), (−6 − −4)) = mean(−1, −2) = −1.5 < 0 → z0 = 0.
    r_w = 10, r_l = −10, β = 0.1: L = 2(1 − σ(1)) = 0.5379. Unclamped (z0 = −1.5) it would be
    (1 − σ(1.15)) + (1 − σ(0.85)) = 0.5399."""
    logps = SequenceLogps(
        chosen=t(-1.0),
        rejected=t(-20.0),
        chosen_tokens=t(1.0),
        rejected_tokens=t(1.0),
        ref_chosen=t(-11.0),
        ref_rejected=t(-10.0),
        kl_policy=t(-5.0, -6.0),
        kl_reference=t(-4.0, -4.0),
    )
    assert_close(get_objective("kto")(logps, beta=0.1).losses, t(2 * (1 - sigmoid(1.0))))


@pytest.mark.parametrize("kl_policy", [(-3.0, -4.0), (-5.0, -6.0)], ids=["z0>0", "z0 clamped"])
def test_kto_reference_point_is_detached(kl_policy):
    """No gradient flows into the KL batch: z0 is a baseline, not an objective (paper §4, TRL)."""
    kl = t(*kl_policy, requires_grad=True)
    chosen = t(-1.0, requires_grad=True)
    logps = SequenceLogps(chosen, t(-7.0), t(1.0), t(1.0), t(-6.5), t(-2.5), kl, t(-4.0, -4.0))
    get_objective("kto")(logps, beta=0.1).losses.sum().backward()
    assert kl.grad is None
    assert chosen.grad is not None


def test_missing_reference_or_kl_batch_is_a_clear_error():
    logps = SequenceLogps(t(-1.0), t(-2.0), t(1.0), t(1.0))
    with pytest.raises(ValueError, match="reference"):
        get_objective("ipo")(logps, tau=0.1)
    with pytest.raises(ValueError, match="KL batch"):
        get_objective("kto")(dataclasses.replace(logps, ref_chosen=t(-1.0), ref_rejected=t(-2.0)), beta=0.1)


# ------------------------------------------------------------------------- every objective
def random_logps(batch: int = 6, kl: int = 5, seed: int = 0) -> SequenceLogps:
    g = torch.Generator().manual_seed(seed)
    n_w = torch.randint(1, 20, (batch,), generator=g).double()
    n_l = torch.randint(1, 20, (batch,), generator=g).double()

    def summed(n):  # (B,) negative, about −2 nats per token
        return -(torch.rand(n.shape, generator=g, dtype=torch.float64) * 4 + 0.01) * n

    chosen, rejected, ref_chosen, ref_rejected = summed(n_w).requires_grad_(), summed(n_l).requires_grad_(), \
        summed(n_w), summed(n_l)
    shared = torch.minimum(n_w, n_l)

    def tail(total, n):  # the share of the sum past the pair's shared length (zero for the shorter completion)
        return total * (n - shared) / n

    return SequenceLogps(
        chosen=chosen,
        rejected=rejected,
        chosen_tokens=n_w,
        rejected_tokens=n_l,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        kl_policy=summed(torch.full((kl,), 8.0, dtype=torch.float64)),
        kl_reference=summed(torch.full((kl,), 8.0, dtype=torch.float64)),
        chosen_tail=tail(chosen, n_w), rejected_tail=tail(rejected, n_l),
        ref_chosen_tail=tail(ref_chosen, n_w), ref_rejected_tail=tail(ref_rejected, n_l),
        chosen_wpo_weight=torch.rand(batch, generator=g, dtype=torch.float64) + 0.2,
        rejected_wpo_weight=torch.rand(batch, generator=g, dtype=torch.float64) + 0.2,
    )


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_shapes_rewards_and_finite_gradients(name):
    logps = random_logps()
    out = get_objective(name)(logps, **defaults(name))
    assert out.losses.shape == (6,)
    assert out.chosen_rewards.shape == out.rejected_rewards.shape == (6,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert torch.isfinite(out.losses).all()
    out.losses.mean().backward()
    assert torch.isfinite(logps.chosen.grad).all() and logps.chosen.grad.abs().sum() > 0
    if name != "sft":  # the only objective that never looks at the rejected completion
        assert torch.isfinite(logps.rejected.grad).all()


def test_uses_reference_and_kl_batch_flags():
    assert {name: o.uses_reference for name, o in OBJECTIVES.items()} == {
        "dpo": True,
        "ipo": True,
        "hinge": True,
        "simpo": False,
        "cpo": False,
        "orpo": False,
        "kto": True,
        **dict.fromkeys(["nca_pair", "exo_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
                         "apo_down", "discopop", "sigmoid_norm"], True),
        "sft": False,
        "fdpo": True,
        "alphapo": False,
        "apo_zero_unpaired": True,
        "ld_dpo": True,
        "wpo": True,
        **dict.fromkeys(["combo", "mpo", "rpo"], True),  # as registered; bind() decides per cell from the terms
    }
    assert [name for name, o in OBJECTIVES.items() if o.unpaired] == ["kto", "apo_zero_unpaired"]
    assert [name for name, o in OBJECTIVES.items() if o.needs_kl_batch] == ["kto"]
    assert {name: o.sequence_parts for name, o in OBJECTIVES.items() if o.sequence_parts} == {
        "ld_dpo": ("tail",), "wpo": ("wpo_weight",)}


def test_a_combination_asks_for_its_terms_sequence_parts():
    combo = get_objective("combo")
    bound = combo.bind({"terms": [{"name": "wpo", "weight": 1.0}, {"name": "ld_dpo", "weight": 0.5},
                                  {"name": "sft", "weight": 1.0}]})
    assert bound.sequence_parts == ("wpo_weight", "tail") and bound.uses_reference
    assert combo.bind({"terms": [{"name": "cpo", "weight": 1.0}]}).sequence_parts == ()


def test_ld_dpo_by_hand():
    """Pair: chosen 3 tokens (−1, −2, −3), rejected 1 token (−4); reference −1 per token. Shared length 1, so the
    chosen tail is −5 (policy) and −2 (reference). α = 0.5: Ŝ_w = −6 + 0.5·5 = −3.5, Ŝ_w^ref = −3 + 0.5·2 = −2;
    no rejected tail. h = (−3.5 + 2) − (−4 + 1) = 1.5; L = −log σ(0.1·1.5)."""
    logps = SequenceLogps(t(-6.0), t(-4.0), t(3.0), t(1.0), ref_chosen=t(-3.0), ref_rejected=t(-1.0),
                          chosen_tail=t(-5.0), rejected_tail=t(0.0), ref_chosen_tail=t(-2.0), ref_rejected_tail=t(0.0))
    out = get_objective("ld_dpo")(logps, beta=0.1, ld_alpha=0.5)
    assert out.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))))
    assert out.chosen_rewards.item() == pytest.approx(0.1 * -1.5)
    plain = get_objective("ld_dpo")(logps, beta=0.1, ld_alpha=1.0)  # α = 1 is DPO
    assert plain.losses.item() == pytest.approx(get_objective("dpo")(logps, beta=0.1).losses.item())
    with pytest.raises(ValueError, match="tail"):
        get_objective("ld_dpo")(SequenceLogps(t(-6.0), t(-4.0), t(3.0), t(1.0), ref_chosen=t(-3.0),
                                              ref_rejected=t(-1.0)), beta=0.1, ld_alpha=0.5)


def test_wpo_by_hand():
    """WPO is DPO's loss times w_w·w_l, and the weights carry no gradient into the loss' scale."""
    logps = SequenceLogps(t(-2.0), t(-3.0), t(2.0), t(2.0), ref_chosen=t(-2.5), ref_rejected=t(-2.5),
                          chosen_wpo_weight=t(0.5), rejected_wpo_weight=t(1.6))
    out = get_objective("wpo")(logps, beta=0.2)
    assert out.losses.item() == pytest.approx(0.8 * -math.log(1 / (1 + math.exp(-0.2 * 1.0))))
    with pytest.raises(ValueError, match="weights"):
        get_objective("wpo")(SequenceLogps(t(-2.0), t(-3.0), t(2.0), t(2.0), ref_chosen=t(-2.5),
                                           ref_rejected=t(-2.5)), beta=0.2)


def test_get_objective_unknown_name_lists_known():
    with pytest.raises(KeyError, match="known"):
        get_objective("ppo")


# ------------------------------------------------------- registry ↔ schema ↔ conf/objective
def test_registry_and_yaml_files_name_the_same_objectives():
    assert {p.stem for p in CONF_OBJECTIVE.glob("*.yaml")} == set(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_schema_matches_loss_signature(name):
    """The schema's fields (minus `name`) are exactly the loss function's keyword-only parameters,
    and `name` defaults to the registry name."""
    objective = get_objective(name)
    params = inspect.signature(objective.loss).parameters.values()
    keyword_only = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    assert keyword_only == objective.hyperparameters
    assert dataclasses.fields(objective.schema)[0].name == "name"
    assert objective.schema().name == name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_yaml_names_schema_parameters_with_schema_defaults(name):
    """conf/objective/<name>.yaml: pulls in schema_<name>, lists every hyper-parameter, and its
    values are the schema defaults (the dataclass and the YAML cannot drift apart)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_OBJECTIVE / f"{name}.yaml"))
    assert cfg.pop("defaults") == [f"schema_{name}", "_self_"]
    assert tuple(cfg) == ("name",) + get_objective(name).hyperparameters
    assert cfg["name"] == name
    assert cfg == dataclasses.asdict(get_objective(name).schema())


@pytest.fixture
def objective_config_dir():
    register_objective_schemas(ConfigStore.instance())
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_OBJECTIVE.parent), version_base=None):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_yaml_composes_against_its_schema(objective_config_dir, name):
    cfg = compose(overrides=[f"+objective={name}"])
    assert OmegaConf.to_container(cfg.objective) == dataclasses.asdict(get_objective(name).schema())


@pytest.mark.parametrize(
    "override", ["objective.beta=abc", "objective.gamma=1.0"], ids=["wrong type", "key of another objective"]
)
def test_schema_rejects_bad_overrides_at_compose_time(objective_config_dir, override):
    """With plain YAML both would be accepted silently. (An explicit `+objective.gamma=...` is
    Hydra's "add this key" and bypasses struct mode by design.)"""
    with pytest.raises(ConfigCompositionException):
        compose(overrides=["+objective=dpo", override])
