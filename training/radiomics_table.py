"""``python -m training --work W radiomics SOURCE``: the radiomics of every contoured case, one CSV row per case.

Each case is read by the container's reader (:func:`hecktor.io.read.read_case`, SUV conversion included) and its
reference label image by ``prepare``'s reader; the features come from
:func:`hecktor.measure.radiomics.radiomics_features` with the settings of a model folder's manifest, the function the
container's measure stage calls, so that a model trained on this table sees the values it will see at run time.
The table's columns are ``PatientID`` and :data:`hecktor.measure.radiomics.FEATURE_NAMES` (empty cells: ``None``), the
names that :meth:`hecktor.core.types.Measurements.as_dict` and ``score-table`` use.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hecktor.core.manifest import RadiomicsConfig
from hecktor.core.types import InputError
from hecktor.io.read import read_case
from hecktor.measure.radiomics import FEATURE_NAMES, radiomics_features
from training.prepare import SkippedCase, SourceCase, find_source_cases, read_reference_labels

__all__ = ["RadiomicsTable", "case_radiomics", "radiomics_table", "write_radiomics_csv"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RadiomicsTable:
    rows: tuple[tuple[str, Mapping[str, float | None]], ...]  # (case id, features) in case order
    skipped: tuple[SkippedCase, ...]


def case_radiomics(case: SourceCase, config: RadiomicsConfig, suv_factor: float | None) -> dict[str, float | None]:
    """The radiomics features of one contoured case (CT in HU, PET in SUV, reference labels)."""
    image_case = read_case(case.folder, known_suv_factor=suv_factor)
    return radiomics_features(image_case.ct, image_case.pet, read_reference_labels(case.labels), config)


def radiomics_table(source: Path, config: RadiomicsConfig, suv_factors: Mapping[str, float]) -> RadiomicsTable:
    """Features of every case under ``source`` (the layouts ``prepare`` reads); unreadable cases are skipped."""
    cases, skipped = find_source_cases(source)
    rows = []
    for case in cases:
        try:
            rows.append((case.case_id, case_radiomics(case, config, suv_factors.get(case.case_id))))
        except (InputError, OSError, RuntimeError) as exc:  # RuntimeError: SimpleITK's read errors
            log.warning("%s: skipped (%s)", case.case_id, exc)
            skipped.append(SkippedCase(case.case_id, case.folder, str(exc)))
        else:
            log.info(
                "%s: %d of %d features",
                case.case_id,
                sum(v is not None for v in rows[-1][1].values()),
                len(FEATURE_NAMES),
            )
    return RadiomicsTable(tuple(rows), tuple(skipped))


def write_radiomics_csv(path: Path, rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> Path:
    """``PatientID`` + :data:`FEATURE_NAMES`, one row per case (``repr`` of floats: read back exactly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("PatientID", *FEATURE_NAMES))
            for case_id, features in rows:
                writer.writerow((case_id, *("" if features[n] is None else repr(features[n]) for n in FEATURE_NAMES)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
