"""Validation splits and bootstrap intervals as pure functions (numpy only).

The challenge tests on centres never seen in training, so the project judges its models by holding
out whole centres: :func:`centre_out_folds` groups the centres into a fixed number of folds (seed 001:
"one large center or a pair of smaller centers per fold"), :func:`leave_one_group_out` holds out one
group at a time (the clinical models' LOCO), and :func:`patient_kfold` is the plain random k-fold by
patient for comparison. Every function returns :class:`Fold` objects holding sorted patient ids, and
is deterministic: the same input (in any order) and seed give the same folds on every machine.
:func:`folds_to_nnunet_splits` writes folds in the layout of nnU-Net's ``splits_final.json``.

:func:`bootstrap_ci` is the percentile bootstrap used for the 95 % intervals of the model card.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BootstrapCI",
    "BootstrapDistribution",
    "Fold",
    "bootstrap_ci",
    "bootstrap_distribution",
    "centre_out_folds",
    "folds_to_nnunet_splits",
    "leave_one_group_out",
    "patient_kfold",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class Fold:
    """One split: ``train`` and ``validation`` are disjoint, sorted tuples of patient (case) ids."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]


def _fold(name: str, ids: Iterable[str], validation: Iterable[str]) -> Fold:
    held = set(validation)
    return Fold(name=name, train=tuple(sorted(i for i in ids if i not in held)), validation=tuple(sorted(held)))


def _unique_ids(ids: Iterable[str]) -> list[str]:
    ids = list(ids)
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate ids: {duplicates[:5]}{' ...' if len(duplicates) > 5 else ''}")
    return sorted(ids)


def patient_kfold(ids: Sequence[str], k: int, seed: int) -> list[Fold]:
    """Random k-fold by patient: every id is in exactly one validation set; folds are named ``fold0``...

    The ids are sorted before a ``numpy.random.default_rng(seed)`` permutation is cut into ``k`` parts
    whose sizes differ by at most one, so the folds depend on the set of ids and the seed only (not on
    the input order). Duplicate ids, ``k < 2`` and ``k`` above the number of ids are errors.
    """
    ordered = _unique_ids(ids)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if k > len(ordered):
        raise ValueError(f"k={k} folds need at least {k} ids, got {len(ordered)}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [_fold(f"fold{i}", ordered, (ordered[j] for j in part)) for i, part in enumerate(np.array_split(perm, k))]


def _members(group_of: Mapping[str, str]) -> dict[str, list[str]]:
    """Group label -> its ids, labels sorted."""
    members: dict[str, list[str]] = {}
    for pid, group in group_of.items():
        members.setdefault(str(group), []).append(pid)
    return dict(sorted(members.items()))


def leave_one_group_out(group_of: Mapping[str, str]) -> list[Fold]:
    """One fold per group (e.g. centre), holding out all of its ids; folds sorted by group label.

    A fold is named by its group label, so ``{f.name: f for f in folds}[label]`` finds a group's fold.
    Fewer than two groups is an error (the training set would be empty).
    """
    members = _members(group_of)
    if len(members) < 2:
        raise ValueError(f"leave-one-group-out needs at least 2 groups, got {sorted(members)}")
    ids = sorted(group_of)
    return [_fold(group, ids, held) for group, held in members.items()]


def centre_out_folds(centre_of: Mapping[str, str], n_folds: int = 5) -> list[Fold]:
    """Centre-out folds: every centre is held out in exactly one fold, with all its patients.

    Grouping rule (deterministic): start with one group per centre; while there are more groups than
    ``n_folds``, merge the two smallest groups (fewest patients; a tie goes to the group whose label,
    its centre names sorted and joined by ``+``, sorts first). Large centres therefore stay alone and
    small ones are paired, which balances validation sizes (seed 001: "one large center or a pair of
    smaller centers per fold"); when many merges are needed a group may hold more than two centres.
    Folds are named ``centre-out:<label>`` (e.g. ``centre-out:CHUP+HMR``) and sorted by label.
    Fewer centres than ``n_folds`` and ``n_folds < 2`` are errors.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    members = _members(centre_of)
    if len(members) < n_folds:
        raise ValueError(f"{n_folds} centre-out folds need at least {n_folds} centres, got {sorted(members)}")
    groups: list[tuple[str, ...]] = [(centre,) for centre in members]

    def size(group: tuple[str, ...]) -> int:
        return sum(len(members[c]) for c in group)

    while len(groups) > n_folds:
        groups.sort(key=lambda g: (size(g), "+".join(g)))
        groups = [tuple(sorted(groups[0] + groups[1])), *groups[2:]]
    ids = sorted(centre_of)
    folds = [_fold(f"centre-out:{'+'.join(g)}", ids, (p for c in g for p in members[c])) for g in groups]
    return sorted(folds, key=lambda f: f.name)


def folds_to_nnunet_splits(folds: Iterable[Fold]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` structure: ``[{"train": [...], "val": [...]}, ...]`` in fold order."""
    return [{"train": list(f.train), "val": list(f.validation)} for f in folds]


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapDistribution:
    """The finite statistic values of the resamples, in resample order, and how many were skipped."""

    values: np.ndarray
    n_resamples: int
    n_skipped: int


class BootstrapCI(tuple[float, float]):
    """``(low, high)``, an ordinary 2-tuple, that also says how many resamples were skipped."""

    n_resamples: int
    n_skipped: int

    def __new__(cls, low: float, high: float, n_resamples: int, n_skipped: int) -> BootstrapCI:
        self = super().__new__(cls, (float(low), float(high)))
        self.n_resamples = n_resamples
        self.n_skipped = n_skipped
        return self

    def __getnewargs__(self) -> tuple[float, float, int, int]:  # pickle and copy call __new__ with these
        return self[0], self[1], self.n_resamples, self.n_skipped

    @property
    def low(self) -> float:
        return self[0]

    @property
    def high(self) -> float:
        return self[1]


def bootstrap_distribution(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> BootstrapDistribution:
    """``statistic(*resampled_arrays)`` over ``n_resamples`` resamples of rows, drawn jointly for all arrays.

    With ``strata``, rows are resampled within each stratum (in sorted stratum order), so stratum sizes
    stay fixed. Resamples whose statistic is not finite (e.g. an AUC of a resample with one class) are
    skipped and counted. Row draws: ``numpy.random.default_rng(seed)``, per resample and stratum
    ``rng.choice(rows_of_stratum, size=len(rows_of_stratum), replace=True)``.
    """
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(a.ndim == 0 or len(a) != n for a in arrays):
        raise ValueError(f"arrays must share their first dimension, got shapes {[a.shape for a in arrays]}")
    if n == 0:
        raise ValueError("bootstrap of zero rows")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if strata is None:
        groups = [np.arange(n)]
    else:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        value = float(statistic(*(a[idx] for a in arrays)))
        if np.isfinite(value):
            values.append(value)
    return BootstrapDistribution(np.asarray(values, dtype=float), n_resamples, n_resamples - len(values))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    strata: np.ndarray | None = None,
) -> BootstrapCI:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``statistic(*arrays)``, rows resampled jointly.

    The bounds are ``numpy.percentile`` (linear interpolation) at ``100 * alpha / 2`` and
    ``100 * (1 - alpha / 2)`` of the finite resample values (see :func:`bootstrap_distribution` for
    the draws, ``strata`` and the skipped resamples). ``(nan, nan)`` if no resample gave a finite value.
    The result is a plain ``(low, high)`` tuple carrying ``n_resamples`` and ``n_skipped``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    dist = bootstrap_distribution(statistic, *arrays, n_resamples=n_resamples, seed=seed, strata=strata)
    if dist.n_skipped:
        logger.debug("bootstrap: %d of %d resamples skipped (statistic not finite)", dist.n_skipped, n_resamples)
    if dist.values.size == 0:
        return BootstrapCI(float("nan"), float("nan"), n_resamples, dist.n_skipped)
    q_low = 100.0 * alpha / 2.0
    low, high = np.percentile(dist.values, [q_low, 100.0 - q_low])
    return BootstrapCI(float(low), float(high), n_resamples, dist.n_skipped)
