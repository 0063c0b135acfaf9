"""The outcome network's clinical vector: which features exist, their raw values, and their scaling.

Seed 000's clinical branch takes the ``ehr.json`` variables and the lesion measurements (MTV, NTV, SUVmax,
TLG, NLG). Here every feature is one number, defined as for the clinical models (:mod:`hecktor.core.features`:
binary fields 0/1, log volumes, log SUVmax in [1, 100]), plus log(1 + TLG/NLG). A
missing value is imputed with the training median, then the value is z-scored with the training mean and
standard deviation and clipped to +-``z_clip`` (all stored in the manifest's ``outcome_network`` section), so
a failed segmentation moves the output a bounded amount. There are no missing-value indicators: an indicator
that is 1 for one cohort only identifies the cohort (issue 9). ``CenterID`` and HPV status are never inputs.

Numpy only. The feature names (:data:`hecktor.core.features.CLINICAL_FEATURES`) live in the core, beside the
manifest schema that validates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hecktor.core.features import CASE_FEATURES, CLINICAL_FEATURES, case_features, finite_in, log1p_or_none
from hecktor.core.types import ClinicalRecord, Measurements

# The features shared with the clinical models; the rest (TLG, NLG) are computed here.
_SHARED = tuple(name for name in CLINICAL_FEATURES if name in CASE_FEATURES)
# TLG/NLG above 300 L * SUV 100 are no lesion: unknown, like any implausible measurement.
_GLYCOLYSIS_RANGE = (0.0, 3.0e5)

__all__ = [
    "CLINICAL_FEATURES",
    "FeatureScaling",
    "FeatureScalingLike",
    "clinical_values",
    "clinical_vector",
    "fit_scaling",
]



class FeatureScalingLike(Protocol):
    """What :func:`clinical_vector` needs of one feature (the manifest's entries have these attributes)."""

    @property
    def name(self) -> str: ...

    @property
    def median(self) -> float: ...

    @property
    def mean(self) -> float: ...

    @property
    def std(self) -> float: ...


@dataclass(frozen=True)
class FeatureScaling:
    name: str
    median: float
    mean: float
    std: float


def clinical_values(record: ClinicalRecord, measurements: Measurements | None) -> dict[str, float | None]:
    """Every feature of :data:`CLINICAL_FEATURES` for one case; ``None`` = unknown (no measurements: all image
    features unknown)."""
    measured = {} if measurements is None else measurements.as_dict()
    shared = case_features(record, measured)
    return {
        **{name: shared[name] for name in _SHARED},
        "log_tlg": log1p_or_none(finite_in(measured.get("tlg"), *_GLYCOLYSIS_RANGE)),
        "log_nlg": log1p_or_none(finite_in(measured.get("nlg"), *_GLYCOLYSIS_RANGE)),
    }


def clinical_vector(
    values: Mapping[str, float | None], scaling: Sequence[FeatureScalingLike], z_clip: float
) -> np.ndarray:
    """(P,) float32: each feature of ``scaling`` in order, median-imputed, z-scored, clipped to +-``z_clip``."""
    out = np.empty(len(scaling), dtype=np.float32)
    for i, feature in enumerate(scaling):
        value = values.get(feature.name)
        raw = feature.median if value is None or not math.isfinite(float(value)) else float(value)
        out[i] = float(np.clip((raw - feature.mean) / feature.std, -z_clip, z_clip))
    return out


def fit_scaling(rows: Sequence[Mapping[str, float | None]], names: Sequence[str]) -> list[FeatureScaling]:
    """Median, then mean and standard deviation after median imputation, of each feature over training rows.

    A feature never observed gets median 0; a constant one gets std 1 (its z-score is then 0 for the median).
    """
    unknown = sorted(set(names) - set(CLINICAL_FEATURES))
    if unknown:
        raise ValueError(f"unknown clinical features {unknown} (known: {sorted(CLINICAL_FEATURES)})")
    scaling = []
    for name in names:
        seen = np.array([float(r[name]) for r in rows if r.get(name) is not None and math.isfinite(float(r[name]))])
        median = float(np.median(seen)) if seen.size else 0.0
        filled = np.array([median if r.get(name) is None else float(r[name]) for r in rows], dtype=np.float64)
        std = float(filled.std()) if filled.size else 0.0
        scaling.append(
            FeatureScaling(name, median, float(filled.mean()) if filled.size else 0.0, std if std > 1e-8 else 1.0)
        )
    return scaling
