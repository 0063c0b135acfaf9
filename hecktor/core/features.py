"""The features of one case that every Task 2/3 model may use, defined once: the clinical record and the
lesion measurements, transformed and checked for plausibility.

Shared by the clinical models (:func:`hecktor.outcome.predict.raw_features`, which adds the radiomics) and the image
network's clinical branch (:mod:`hecktor.outcome.features`), so one name always means one value. Depends on
nothing but :mod:`hecktor.core.types`, so the manifest schema can import the names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hecktor.core.types import ClinicalRecord

__all__ = ["CASE_FEATURES", "CLINICAL_FEATURES", "case_features", "finite_in", "log1p_or_none"]

# Plausible ranges for image measurements; outside them the value is treated as unknown. A
# lesion SUVmax below 1 is below blood pool (a unit or mask problem), above 100 it is almost
# certainly Bq/mL that escaped conversion; volumes above 3 L are not a head-and-neck tumour.
_VOLUME_RANGE_ML = (0.0, 3000.0)
_SUVMAX_RANGE = (1.0, 100.0)

CASE_FEATURES: dict[str, str] = {
    "age": "age in years (ehr.json)",
    "gender_male": "1 male, 0 female (ehr.json)",
    "tobacco": "tobacco consumption 0/1 (ehr.json)",
    "alcohol": "alcohol consumption 0/1 (ehr.json)",
    "performance_status": "performance status 0-4 (ehr.json)",
    "treatment_chemoradiotherapy": "1 chemoradiotherapy, 0 radiotherapy alone (ehr.json)",
    "m_stage": "M-stage 0/1 (ehr.json; RADCURE records it, the HECKTOR development table does not)",
    "log_gtvp_volume": "log(1 + GTVp volume in mL) (measured)",
    "log_gtvn_volume": "log(1 + total GTVn volume in mL) (measured)",
    "log_total_volume": "log(1 + GTVp + GTVn volume in mL) (measured)",
    "log_gtvp_suvmax": "log SUVmax inside GTVp, unknown outside [1, 100] (measured)",
    "log_gtvn_suvmax": "log SUVmax inside GTVn, unknown outside [1, 100] (measured)",
}

# The record and lesion features as every Task 2/3 model defines them (above), and the
# glycolysis measurements seed 000's clinical branch adds.
_SHARED = ("age", "gender_male", "tobacco", "alcohol", "performance_status", "treatment_chemoradiotherapy",
           "m_stage", "log_gtvp_volume", "log_gtvn_volume", "log_gtvp_suvmax", "log_gtvn_suvmax")  # fmt: skip

CLINICAL_FEATURES: Mapping[str, str] = MappingProxyType(
    {
        **{name: CASE_FEATURES[name] for name in _SHARED},
        "log_tlg": "log(1 + TLG of GTVp in SUV*mL) (measured)",
        "log_nlg": "log(1 + NLG of GTVn in SUV*mL) (measured)",
    }
)


def finite_in(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float if it is a finite number in ``[low, high]``, else ``None`` (unknown)."""
    if value is None or isinstance(value, bool):  # a yes/no value is no measurement
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond the float range
        return None
    if not math.isfinite(number) or not low <= number <= high:
        return None
    return number


def log1p_or_none(value: float | None) -> float | None:
    return None if value is None else math.log1p(value)


def _log_or_none(value: float | None) -> float | None:
    return None if value is None else math.log(value)


def case_features(record: ClinicalRecord, measured: Mapping[str, Any]) -> dict[str, float | None]:
    """Every feature of :data:`CASE_FEATURES`; ``None`` = unknown.

    ``measured`` is ``Measurements.as_dict()`` at run time, or the columns of a training table
    (``gtvp_volume_ml``, ``gtvn_volume_ml``, ``gtvp_suvmax``, ``gtvn_suvmax``); absent keys are unknown. Log
    transforms tame the heavy right tail of volumes and SUV.
    """
    vol_p = finite_in(measured.get("gtvp_volume_ml"), *_VOLUME_RANGE_ML)
    vol_n = finite_in(measured.get("gtvn_volume_ml"), *_VOLUME_RANGE_ML)
    total = None if vol_p is None or vol_n is None else vol_p + vol_n
    return {
        "age": record.age,
        "gender_male": record.gender_male,
        "tobacco": record.tobacco,
        "alcohol": record.alcohol,
        "performance_status": record.performance_status,
        "treatment_chemoradiotherapy": record.treatment_chemoradiotherapy,
        "m_stage": record.m_stage,
        "log_gtvp_volume": log1p_or_none(vol_p),
        "log_gtvn_volume": log1p_or_none(vol_n),
        "log_total_volume": log1p_or_none(total),
        "log_gtvp_suvmax": _log_or_none(finite_in(measured.get("gtvp_suvmax"), *_SUVMAX_RANGE)),
        "log_gtvn_suvmax": _log_or_none(finite_in(measured.get("gtvn_suvmax"), *_SUVMAX_RANGE)),
    }
