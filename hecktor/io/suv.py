"""PET units: detect PET delivered in Bq/mL instead of SUV and bring it to SUV robustly.

The container cannot read DICOM tags (inputs are .mha), so a Bq/mL volume is recognised by
its value range and rescaled from the image itself: the median uptake of body tissue (voxels
above 2 % of the 99th percentile) is mapped to a typical SUVbw value. On the raw whole-body
PET of ``STS_001`` (true factor 2.43e-4 from the DICOM tags) that median is 0.57 SUVbw over
the whole body and 0.61 over its cranial 327 mm (a head-and-neck-like field of view), so the
target is 0.58. The 10 % cut first tried failed on a head-and-neck field of view: the brain
then dominates the 99th percentile and body tissue falls below the cut. The 51 HECKTOR patients delivered in Bq/mL have
factors from 2.1e-4 to 6.6e-4 (a 3x spread), so no single constant factor would do.

Validation on data the constant was not fitted on: the real SUV PETs of STS_002 and STS_003 (other
patients), turned into Bq/mL with each of the 51 real HECKTOR factors, give back the factor within
3 % and 19 % (``test/test_suv.py``). Those are limb fields of view; no head-and-neck PET with a
known factor exists here, so the error on HECKTOR-like fields of view is not measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["BODY_MEDIAN_SUV", "BQML_DETECTION_SUV", "SuvConversion", "to_suv"]

log = logging.getLogger(__name__)

# No FDG SUV image has a 99.9th percentile this high; Bq/mL images sit at 1e3-1e5.
BQML_DETECTION_SUV = 150.0
BODY_MEDIAN_SUV = 0.58
BODY_FRACTION_OF_P99 = 0.02


# Statistics of a larger PET are taken on a regular subsample of about this many voxels: percentiles
# copy their input, and a whole-body PET would otherwise need a second full copy just for a
# decision whose threshold (150) is two orders of magnitude from either population.
MAX_STATISTICS_VOXELS = 1 << 24


@dataclass(frozen=True)
class SuvConversion:
    factor: float  # multiply the input PET by this to get SUV
    detected_units: str  # "SUV" or "BQML"
    p999: float  # the 99.9th percentile the decision was made on (input units)
    body_median_suv: float  # median body uptake after conversion (BODY_MEDIAN_SUV when rescaled)


def _statistics_sample(pet: np.ndarray) -> np.ndarray:
    """``pet`` itself, or a regular strided subsample (a view) of about ``MAX_STATISTICS_VOXELS`` voxels."""
    if pet.size <= MAX_STATISTICS_VOXELS:
        return pet
    step = int(np.ceil((pet.size / MAX_STATISTICS_VOXELS) ** (1.0 / 3.0)))
    return pet[::step, ::step, ::step]


def _body_median(pet: np.ndarray) -> float:
    """Median of the voxels above ``BODY_FRACTION_OF_P99`` of the 99th percentile (body tissue)."""
    finite = pet[np.isfinite(pet)]
    p99 = float(np.percentile(finite, 99))
    return float(np.median(finite[finite > BODY_FRACTION_OF_P99 * p99]))


def estimate_bqml_to_suv_factor(pet: np.ndarray) -> float:
    """Factor that maps the median body uptake of a Bq/mL volume to ``BODY_MEDIAN_SUV``."""
    return BODY_MEDIAN_SUV / _body_median(_statistics_sample(pet))


def to_suv(pet: np.ndarray) -> SuvConversion:
    """Decide whether ``pet`` is already SUV; return the factor that makes it SUV."""
    sample = _statistics_sample(pet)
    p999 = float(np.percentile(sample, 99.9))
    if p999 <= BQML_DETECTION_SUV:
        return SuvConversion(factor=1.0, detected_units="SUV", p999=p999, body_median_suv=float("nan"))
    factor = estimate_bqml_to_suv_factor(sample)
    log.warning(
        "PET values look like Bq/mL (99.9th percentile %.0f > %.0f SUV); rescaled by %.3g so that body "
        "tissue has a median SUV of %.2f. SUV measurements of this case are approximate.",
        p999, BQML_DETECTION_SUV, factor, BODY_MEDIAN_SUV,
    )
    return SuvConversion(factor=factor, detected_units="BQML", p999=p999, body_median_suv=BODY_MEDIAN_SUV)
