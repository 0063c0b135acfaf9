"""Frozen data types passed between the pipeline stages.

Arrays are numpy in (z, y, x) order; images keep their geometry as SimpleITK images until
the last moment (see ``hecktor.core.geometry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_GTVN",
    "LABEL_GTVP",
    "Case",
    "ClinicalRecord",
    "DicomSeriesRef",
    "InputError",
    "Measurements",
    "Predictions",
    "Probabilities",
    "RecoverableProblem",
    "Roi",
]

LABEL_BACKGROUND = 0
LABEL_GTVP = 1
LABEL_GTVN = 2


class InputError(ValueError):
    """A case input that cannot be processed; the message names the file and the problem."""


@dataclass(frozen=True)
class RecoverableProblem:
    """An input problem the reader worked around with a documented fallback.

    ``code`` is stable (it keys the README's input-policy table and the run report); the default
    policy goes on with ``fallback`` applied and a warning, ``--strict`` refuses the case.
    """

    code: str
    path: Path
    problem: str
    fallback: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; {self.fallback}"


@dataclass(frozen=True)
class ClinicalRecord:
    """What ``ehr.json`` carries, normalised; ``None`` means unknown.

    Binary fields are 0/1 floats, ``performance_status`` is 0-4, ``m_stage`` is 0/1
    (``Mx`` and missing are ``None``). ``center_id`` is kept for logging only: models never
    use it, because test centres are unseen.
    """

    age: float | None = None
    gender_male: float | None = None
    tobacco: float | None = None
    alcohol: float | None = None
    performance_status: float | None = None
    treatment_chemoradiotherapy: float | None = None
    m_stage: float | None = None
    hpv_positive: float | None = None
    center_id: int | None = None


@dataclass(frozen=True)
class DicomSeriesRef:
    """A DICOM series a case was read from: what ``case.json`` records and what DICOM outputs reference.

    ``files`` are the series' instance files in the order their slices were stacked (inferior to superior
    along the slice normal, as the volume's index z); ``sop_instance_uids`` follow the same order.
    """

    role: str  # "CT" or "PET"
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Case:
    """One case as read from disk: CT in HU and PET in SUV on their own grids."""

    case_id: str
    ct: sitk.Image
    pet: sitk.Image
    clinical: ClinicalRecord
    ct_path: Path
    pet_path: Path
    ehr_path: Path | None = None  # None: the case has no ehr.json
    planning_ct: sitk.Image | None = None
    rt_dose: sitk.Image | None = None
    problems: tuple[RecoverableProblem, ...] = ()
    # The DICOM series the CT and PET came from (empty when the images were not DICOM).
    dicom_series: tuple[DicomSeriesRef, ...] = ()


@dataclass(frozen=True)
class Roi:
    """The head-and-neck region of interest resampled to 1 mm isotropic.

    ``ct_hu`` and ``pet_suv`` are float32 arrays (z, y, x) on ``grid``, an empty SimpleITK
    image that carries the ROI geometry (1 mm spacing; its direction is the patient frame of
    :func:`hecktor.core.geometry.patient_frame`, so grid index steps are frame coordinate steps).
    ``center_mm`` is the physical centre of the grid; ``located_by`` says whether the ROI was
    anchored on the brain ("pet-brain") or by the documented fallback. ``midline_x_mm`` and
    ``brain_bottom_mm`` are patient-frame coordinates (x: the patient's left is +, z: superior is +).
    """

    grid: sitk.Image
    ct_hu: np.ndarray
    pet_suv: np.ndarray
    center_mm: tuple[float, float, float]
    located_by: str
    midline_x_mm: float
    midline_from: str  # "brain centroid", "body centre on the CT" or the ROI-centre fallback
    brain_bottom_mm: float | None = None  # frame z of the brain's lowest point
    # Reference labels (uint8 (z, y, x), 0/1/2) on ``grid``, only when extract_roi was given a label image
    # (training: hecktor's ``training prepare``); inference never has them.
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class Probabilities:
    """Per-class probabilities (classes, z, y, x) float32 on the ROI grid; class 0 = background."""

    grid: sitk.Image
    values: np.ndarray
    engine: str


@dataclass(frozen=True)
class Measurements:
    """Quantities measured on the final masks (CT grid) and the PET in SUV."""

    gtvp_volume_ml: float
    gtvn_volume_ml: float
    gtvp_suvmax: float | None
    gtvp_suvmean: float | None
    gtvn_suvmax: float | None
    gtvn_suvmean: float | None
    tlg: float  # SUVmean x volume of GTVp, in SUV*mL
    nlg: float  # SUVmean x volume of GTVn, in SUV*mL
    node_count: int
    # Radiomics features by name (hecktor.measure.radiomics.FEATURE_NAMES) when the manifest enables them, else None.
    radiomics: Mapping[str, float | None] | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields above by name, then the radiomics features (if any) under their own prefixed names."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "radiomics"}
        values.update(self.radiomics or {})
        return values


@dataclass(frozen=True)
class Predictions:
    rfs_risk: float
    hpv_probability: float
    hpv_positive: bool
    details: dict[str, float] = field(default_factory=dict)
