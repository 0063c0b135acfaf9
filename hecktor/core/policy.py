"""The input policy: what a recoverable input problem does to a run.

On the platform a failed job can fail the whole submission, so by default a case is answered
whenever its images can be read: the reader applies a documented fallback and the run log (and the
run report) says so. A hospital may prefer a refusal: with ``strict`` every recoverable problem
refuses the case (exit code 2, nothing written). Unrecoverable problems are refusals in both modes
and never reach this module (the reader raises :class:`~hecktor.core.types.InputError` itself).

``RECOVERABLE`` is the single list of recoverable problem codes; the README's policy table is
checked against it by the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import MappingProxyType

from hecktor.core.types import InputError, RecoverableProblem

__all__ = ["RECOVERABLE", "apply_input_policy"]

log = logging.getLogger(__name__)

RECOVERABLE = MappingProxyType({
    "ehr-unusable": "ehr.json unreadable, not JSON, hostile (deep nesting, huge numbers, too large) or not an object",
    "ehr-values-unreadable": "values in ehr.json that are present but unusable (\"Age\": true, 400-digit numbers, "
                             "out-of-range or contradictory values)",
    "ehr-unknown-key": "a key in ehr.json that no documented spelling matches (a typo such as 'Agee')",
    "non-finite-voxels": "NaN or infinite voxels in an image",
    "ct-pet-swapped": "a CT without air beside a PET with air as in a CT: the two given the wrong way round",
    "pet-no-uptake": "PET without any positive uptake",
    "pet-bqml": "PET values in Bq/mL instead of SUV",
    "optional-image-unusable": "a broken or ambiguous optional image (ct-planning, rt-dose) that no model uses",
    "junk-file": "hidden or non-image files next to the images (e.g. ._case.mha, .DS_Store)",
    # DICOM studies (hecktor.io.dicom): the series choice, the PET header's SUV tags, a series' geometry.
    "dicom-series-ambiguous": "a DICOM study with two equally good CT or PET series (the same slice count)",
    "dicom-frame-of-reference": "the chosen DICOM CT and PET share no FrameOfReferenceUID",
    "dicom-suv-tags": "a DICOM PET header lacking a tag SUVbw needs (weight, dose, times, units, decay correction)",
    "dicom-missing-slices": "a DICOM series with gaps of whole slice steps",
    "dicom-uneven-spacing": "a DICOM series whose slices lie off a regular grid by more than 5 % of a step",
    "dicom-gantry-tilt": "a DICOM series stacked obliquely to its slices (gantry tilt)",
    "dicom-mixed-orientation": "a DICOM series mixing slices of different orientation, size or pixel spacing",
})


def apply_input_policy(problems: Sequence[RecoverableProblem], strict: bool) -> None:
    """Log every recoverable problem with its fallback (default) or refuse the case (``strict``).

    Raises:
        InputError: ``strict`` and at least one problem; the message names every file concerned.
    """
    unknown = sorted({p.code for p in problems} - set(RECOVERABLE))
    if unknown:
        raise ValueError(f"undocumented recoverable problem codes {unknown}")  # a programming error
    if strict and problems:
        details = "; ".join(f"{p.path}: {p.problem}" for p in problems)
        raise InputError(f"refused in strict mode ({len(problems)} problem(s)): {details}")
    for problem in problems:
        log.warning("input problem [%s] %s: %s -> %s", problem.code, problem.path, problem.problem, problem.fallback)
