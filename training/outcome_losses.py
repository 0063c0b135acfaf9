"""Losses of the outcome network (:mod:`hecktor.outcome.torch_backend.network`); torch only.

RFS, seed 000 (discrete-time hazard, K bins): with hazards ``h_k = sigmoid(z_k)``, survival
``S_k = prod_{j<=k} (1 - h_j)``, ``S_0 = 1``, the observed bin ``y`` (0-based) and the censoring indicator ``c``
(1 = censored),

    l_base   = -(1 - c) [log S_{y} + log h_y] - c log S_{y+1}        (S indexed from S_0: S_{y} precedes bin y)
    l_uncens = -(1 - c) [log S_{y} + log h_y]
    L        = mean_i ((1 - alpha) l_base + alpha l_uncens),  alpha = 0.5.

Seed 000 writes a sum over patients; the mean only rescales the learning rate and keeps it independent of the
batch size. Logs are taken with ``logsigmoid`` (no clamping): ``log h = logsigmoid(z)``,
``log(1 - h) = logsigmoid(-z)``.

HPV, seed 000: ``-w(y) [y log p + (1 - y) log(1 - p)]`` averaged over the batch, ``w_pos = 1``,
``w_neg = n_pos / max(n_neg, 1)`` from the training-set class counts.

RFS alternative, seed 003 (``risk`` = any score, higher = earlier relapse; here the network's ``-sum_k S_k``):

    L_cox  = -1 / (sum_i e_i + eps) sum_{i: e_i = 1} (r_i - log sum_{j: t_j >= t_i} exp r_j)     (Breslow ties)
    L_rank = 1 / |P| sum_{(i, j) in P} exp(a (r_j - r_i)),  P = {(i, j): e_i = 1, t_i < t_j},  a = 1
    L      = L_cox + 0.3 L_rank

(the seed's contrastive term needs its intermediate-feature ensemble and is left out). A batch without a
comparable pair has ``L_rank = 0``; without an event ``L_cox = 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "COX_EPS",
    "DEFAULT_ALPHA",
    "RANK_WEIGHT",
    "cox_partial_likelihood",
    "cox_rank_loss",
    "discrete_hazard_nll",
    "hazard_risk",
    "hpv_class_weights",
    "pairwise_ranking_loss",
    "weighted_bce",
]

DEFAULT_ALPHA = 0.5  # seed 000
RANK_WEIGHT = 0.3  # seed 003's lambda_rank
RANK_SCALE = 1.0  # seed 003's alpha in exp(alpha (r_j - r_i))
COX_EPS = 1e-8


def discrete_hazard_nll(
    logits: torch.Tensor, bins: torch.Tensor, censored: torch.Tensor, alpha: float = DEFAULT_ALPHA
) -> torch.Tensor:
    """Seed 000's discrete-time hazard loss; ``logits`` (B, K), ``bins`` (B,) int in 0..K-1, ``censored`` (B,) 0/1."""
    log_h = F.logsigmoid(logits)
    log_one_minus_h = F.logsigmoid(-logits)
    # log S_k for k = 0..K (S_0 = 1).
    log_s = torch.cat([torch.zeros_like(logits[:, :1]), torch.cumsum(log_one_minus_h, dim=1)], dim=1)
    y = bins.long().unsqueeze(1)
    c = censored.to(logits.dtype)
    event_ll = torch.gather(log_s, 1, y).squeeze(1) + torch.gather(log_h, 1, y).squeeze(1)
    censored_ll = torch.gather(log_s, 1, y + 1).squeeze(1)
    uncensored = -(1.0 - c) * event_ll
    base = uncensored - c * censored_ll
    return ((1.0 - alpha) * base + alpha * uncensored).mean()


def hazard_risk(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) hazard logits -> (B,) ``-sum_k S_k``, as :func:`hecktor.outcome.inputs.hazard_risk` computes it."""
    return -torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1)).sum(dim=1)


def hpv_class_weights(labels: torch.Tensor) -> tuple[float, float]:
    """Seed 000's ``(w_pos, w_neg) = (1, n_pos / max(n_neg, 1))`` from training labels (0/1)."""
    n_pos = int((labels > 0.5).sum())
    n_neg = int((labels <= 0.5).sum())
    return 1.0, n_pos / max(n_neg, 1)


def weighted_bce(logit: torch.Tensor, label: torch.Tensor, w_pos: float, w_neg: float) -> torch.Tensor:
    """Class-weighted binary cross-entropy on logits, averaged over the batch; ``logit``, ``label`` (B,)."""
    label = label.to(logit.dtype)
    weights = torch.where(label > 0.5, torch.full_like(label, w_pos), torch.full_like(label, w_neg))
    return (weights * F.binary_cross_entropy_with_logits(logit, label, reduction="none")).mean()


def cox_partial_likelihood(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Seed 003's equation (2): negative Cox partial log-likelihood per event (Breslow ties)."""
    e = events.to(risk.dtype)
    at_risk = times.unsqueeze(0) >= times.unsqueeze(1)  # [i, j]: j is in i's risk set
    masked = torch.where(at_risk, risk.unsqueeze(0), torch.full_like(at_risk, float("-inf"), dtype=risk.dtype))
    log_denominator = torch.logsumexp(masked, dim=1)
    return -((risk - log_denominator) * e).sum() / (e.sum() + COX_EPS)


def pairwise_ranking_loss(
    risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor, scale: float = RANK_SCALE
) -> torch.Tensor:
    """Seed 003's equation (3): mean of ``exp(scale (r_j - r_i))`` over pairs with ``e_i = 1`` and ``t_i < t_j``."""
    pairs = (events.unsqueeze(1) > 0.5) & (times.unsqueeze(1) < times.unsqueeze(0))
    if not bool(pairs.any()):
        return risk.sum() * 0.0  # keeps the graph (and the device) of ``risk``
    return torch.exp(scale * (risk.unsqueeze(0) - risk.unsqueeze(1)))[pairs].mean()


def cox_rank_loss(
    risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor, rank_weight: float = RANK_WEIGHT
) -> torch.Tensor:
    """Seed 003's RFS objective without its contrastive term: ``L_cox + 0.3 L_rank``."""
    return cox_partial_likelihood(risk, times, events) + rank_weight * pairwise_ranking_loss(risk, times, events)
