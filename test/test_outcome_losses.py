"""training/outcome_losses.py against values computed by hand on tiny batches (written out below), and the
hazard -> risk arithmetic shared with the container (hecktor/outcome/inputs.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hecktor.outcome.inputs import hazard_risk as numpy_hazard_risk
from hecktor.outcome.inputs import survival_curve, time_bins
from training.outcome_losses import (
    cox_partial_likelihood,
    cox_rank_loss,
    discrete_hazard_nll,
    hazard_risk,
    hpv_class_weights,
    pairwise_ranking_loss,
    weighted_bce,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
CUTS = (769.0, 1357.0, 2626.0)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_time_bins_follow_the_seed_cut_points() -> None:
    assert time_bins([0, 768.9, 769, 1356, 1357, 2625, 2626, 9000], CUTS).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# Logits 0 in every bin: h = 1/2, S = 1/2, 1/4, 1/8, 1/16.
# A: relapse in bin 2 -> -log(S_2 h_2) = -log(1/4 * 1/2) = 3 ln2 (base and uncensored alike).
# B: censored in bin 1 -> base -log S_2 = 2 ln2, uncensored 0.
@pytest.mark.parametrize(
    ("alpha", "expected"), [(0.5, (3 * LN2 + 0.5 * 2 * LN2) / 2), (0.0, 2.5 * LN2), (1.0, 1.5 * LN2)]
)
def test_discrete_hazard_nll_half_hazards(alpha: float, expected: float) -> None:
    loss = discrete_hazard_nll(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([2, 1]), _t(0, 1), alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_discrete_hazard_nll_mixed_hazards() -> None:
    # z = (0, ln 1/3, ln 3, 0): h = (1/2, 1/4, 3/4, 1/2), S = (1/2, 3/8, 3/32, 3/64).
    z = _t(0.0, math.log(1 / 3), LN3, 0.0).reshape(1, 4).repeat(3, 1)
    bins, censored = torch.tensor([2, 0, 3]), _t(0, 0, 1)
    event_2 = -math.log(3 / 8 * 3 / 4)  # S_2 h_2
    event_0 = -math.log(1 / 2)  # S_0 h_0 = h_0
    censored_3 = -math.log(3 / 64)  # survived bin 3 (the last, unbounded): S_4
    expected = ((event_2) + (event_0) + 0.5 * censored_3) / 3
    assert discrete_hazard_nll(z, bins, censored).item() == pytest.approx(expected, rel=1e-12)


def test_discrete_hazard_nll_is_stable_and_differentiable_at_extreme_logits() -> None:
    z = _t(-60.0, 60.0, 0.0, 0.0).reshape(1, 4).requires_grad_(True)
    loss = discrete_hazard_nll(z, torch.tensor([0]), _t(0))  # event where h = sigmoid(-60)
    loss.backward()
    assert loss.item() == pytest.approx(60.0, rel=1e-9)  # -log sigmoid(-60) = 60 + log(1 + e^-60)
    assert torch.isfinite(z.grad).all()


def test_risk_is_minus_the_summed_survival_in_torch_and_numpy() -> None:
    z = np.zeros((1, 4))
    assert survival_curve(z)[0].tolist() == pytest.approx([1 / 2, 1 / 4, 1 / 8, 1 / 16])
    assert numpy_hazard_risk(z)[0] == pytest.approx(-15 / 16)
    assert hazard_risk(torch.zeros(1, 4, dtype=torch.float64)).item() == pytest.approx(-15 / 16)
    # Higher hazards -> higher risk.
    assert numpy_hazard_risk(np.full((1, 4), 2.0))[0] > numpy_hazard_risk(np.full((1, 4), -2.0))[0]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4))
    assert hazard_risk(torch.from_numpy(logits)).numpy() == pytest.approx(numpy_hazard_risk(logits), abs=1e-12)


def test_weighted_bce_uses_the_seed_class_weights() -> None:
    labels = _t(0, 1, 1)
    w_pos, w_neg = hpv_class_weights(labels)
    assert (w_pos, w_neg) == (1.0, 2.0)  # n_pos / n_neg = 2 / 1
    # p = (1/2, 3/4, 1/2): 2 * ln2, -ln(3/4), ln2.
    expected = (2 * LN2 + math.log(4 / 3) + LN2) / 3
    assert weighted_bce(_t(0.0, LN3, 0.0), labels, w_pos, w_neg).item() == pytest.approx(expected, rel=1e-12)
    assert hpv_class_weights(_t(1, 1)) == (1.0, 2.0)  # no negatives: n_pos / max(0, 1)


def test_cox_partial_likelihood_by_hand() -> None:
    # r = (0, ln2, 0), t = (1, 2, 3), e = (1, 1, 0): exp r = (1, 2, 1).
    # i = 0: 0 - log(1 + 2 + 1); i = 1: ln2 - log(2 + 1).  L = -(-ln4 + ln2 - ln3) / 2 = ln6 / 2.
    r, t, e = _t(0.0, LN2, 0.0), _t(1, 2, 3), _t(1, 1, 0)
    assert cox_partial_likelihood(r, t, e).item() == pytest.approx(math.log(6) / 2, rel=1e-7)
    # Tied event times (Breslow): both at-risk sets are all three subjects -> L = ln3.
    assert cox_partial_likelihood(_t(0, 0, 0), _t(1, 1, 2), _t(1, 1, 0)).item() == pytest.approx(LN3, rel=1e-7)
    assert cox_partial_likelihood(r, t, _t(0, 0, 0)).item() == 0.0


def test_pairwise_ranking_loss_by_hand() -> None:
    # Pairs (i relapsed, t_i < t_j): (0,1), (0,2), (1,2); exp(r_j - r_i) = 2, 1, 1/2 -> mean 7/6.
    r, t, e = _t(0.0, LN2, 0.0), _t(1, 2, 3), _t(1, 1, 0)
    assert pairwise_ranking_loss(r, t, e).item() == pytest.approx(7 / 6, rel=1e-12)
    assert cox_rank_loss(r, t, e).item() == pytest.approx(math.log(6) / 2 + 0.3 * 7 / 6, rel=1e-7)
    no_pairs = pairwise_ranking_loss(r.clone().requires_grad_(True), t, _t(0, 0, 0))
    assert no_pairs.item() == 0.0 and no_pairs.requires_grad


def test_ranking_and_cox_losses_fall_when_the_order_is_right() -> None:
    t, e = _t(1, 2, 3, 4), _t(1, 1, 1, 0)
    right, wrong = _t(3, 2, 1, 0), _t(0, 1, 2, 3)
    assert cox_rank_loss(right, t, e) < cox_rank_loss(wrong, t, e)
