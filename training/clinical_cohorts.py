"""The training patients of the Task 2/3 models: the HECKTOR development centres and RADCURE, as one table of
runtime features (:func:`hecktor.outcome.predict.raw_features`), labels, validation group and cohort.

HECKTOR rows: the 2025 training table (clinical record, reference-mask volumes) joined with the HECKTOR 2022
SUVmax table where a patient is in it. RADCURE rows: :func:`training.radcure.load_radcure` (its mapping and
assumptions are documented there); RADCURE has no image measurements, so every image feature is unknown.

The group (``CHUM`` ... ``MDA``, ``RADCURE``) only forms validation folds and the cohort (``HECKTOR``,
``RADCURE``) only balances classes and masks missingness; neither is ever a model input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hecktor.core.validation import leave_one_group_out, patient_kfold
from hecktor.io.clinical import clinical_record_from_mapping
from hecktor.measure.radiomics import FEATURE_NAMES as RADIOMICS_FEATURES
from hecktor.outcome.predict import raw_features
from training.radcure import load_radcure

__all__ = ["CENTRE_NAMES", "Cohorts", "load_cohorts", "load_hecktor", "load_radcure_cohort"]

CENTRE_NAMES = {1: "CHUM", 2: "CHUP", 3: "CHUS", 4: "CHUV", 5: "MDA", 6: "HGJ", 7: "HMR", 8: "USZ"}
HECKTOR, RADCURE = "HECKTOR", "RADCURE"
INNER_KFOLD = 5  # patient folds when a training set holds one group only
FOLD_SEED = 20250


@dataclass(frozen=True)
class Cohorts:
    """Patients with runtime features and labels (NaN = unknown), their validation group and cohort."""

    patient_ids: tuple[str, ...]
    groups: np.ndarray
    cohorts: np.ndarray
    raws: tuple[Mapping[str, float | None], ...]
    time: np.ndarray
    event: np.ndarray
    hpv: np.ndarray

    def subset(self, rows: np.ndarray) -> Cohorts:
        """The patients selected by a boolean mask (or index array), in table order."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Cohorts(
            tuple(self.patient_ids[i] for i in idx),
            self.groups[idx],
            self.cohorts[idx],
            tuple(self.raws[i] for i in idx),
            self.time[idx],
            self.event[idx],
            self.hpv[idx],
        )

    def with_raws(self, raws: Sequence[Mapping[str, float | None]]) -> Cohorts:
        return replace(self, raws=tuple(raws))

    @property
    def rfs_known(self) -> np.ndarray:
        return np.isfinite(self.time) & np.isfinite(self.event)

    def labelled(self, task: str) -> np.ndarray:
        """The patients whose label of ``task`` ("hpv" or "rfs") is known."""
        return np.isfinite(self.hpv) if task == "hpv" else self.rfs_known

    def __len__(self) -> int:
        return len(self.patient_ids)

    def inner_folds(self) -> list[np.ndarray]:
        """Held-out masks for model selection inside this set: one per group, or, when the set holds a single
        group (RADCURE alone), :data:`INNER_KFOLD` random patient folds."""
        ids = np.asarray(self.patient_ids)
        if len(set(self.groups)) >= 2:
            folds = leave_one_group_out(dict(zip(self.patient_ids, self.groups, strict=True)))
        else:
            folds = patient_kfold(self.patient_ids, INNER_KFOLD, FOLD_SEED)
        return [np.isin(ids, fold.validation) for fold in folds]


def _measured_from_row(row: Mapping) -> dict[str, float | None]:
    """The HECKTOR table's reference-mask measurements under the names ``Measurements`` uses (radiomics columns,
    when a radiomics table was joined, keep their own names)."""
    return {
        "gtvp_volume_ml": row.get("GTVp_volume_ml"),
        "gtvn_volume_ml": row.get("GTVn_volume_ml"),
        "gtvp_suvmax": row.get("MaxLesionSUV"),
        "gtvn_suvmax": row.get("MaxLymphNodeSUV"),
        **{name: row[name] for name in RADIOMICS_FEATURES if name in row},
    }


def _cohorts_from_frame(frame: pd.DataFrame, source: str, cohort: str, measured: bool) -> Cohorts:
    rows = frame.to_dict(orient="records")
    records = [clinical_record_from_mapping(r, source=f"{source}:{r['PatientID']}") for r in rows]
    pairs = zip(records, rows, strict=True)
    raws = tuple(raw_features(rec, _measured_from_row(r) if measured else {}) for rec, r in pairs)
    groups = [RADCURE if cohort == RADCURE else CENTRE_NAMES.get(int(rec.center_id or -1), str(rec.center_id))
              for rec in records]  # fmt: skip
    return Cohorts(
        patient_ids=tuple(str(r["PatientID"]) for r in rows),
        groups=np.array(groups, dtype=object),
        cohorts=np.full(len(rows), cohort, dtype=object),
        raws=raws,
        time=pd.to_numeric(frame["RFS"], errors="coerce").to_numpy(float),
        event=pd.to_numeric(frame["Relapse"], errors="coerce").to_numpy(float),
        hpv=pd.to_numeric(frame["HPV Status"], errors="coerce").to_numpy(float),
    )


def load_hecktor(table: Path, suvmax: Path | None, radiomics: Path | None = None) -> Cohorts:
    """The HECKTOR development centres, with the 2022 SUVmax table joined where a patient is in it, and a radiomics
    table (``python -m training radiomics``: PatientID and :data:`hecktor.measure.radiomics.FEATURE_NAMES`) if given."""
    frame = pd.read_csv(table)
    if suvmax is not None and Path(suvmax).exists():
        frame = frame.merge(pd.read_csv(suvmax), on="PatientID", how="left", validate="one_to_one")
    if radiomics is not None:
        extra = pd.read_csv(radiomics, usecols=lambda c: c == "PatientID" or c in RADIOMICS_FEATURES)
        frame = frame.merge(extra, on="PatientID", how="left", validate="one_to_one")
    return _cohorts_from_frame(frame, Path(table).name, HECKTOR, measured=True)


def load_radcure_cohort(path: Path) -> Cohorts:
    return _cohorts_from_frame(load_radcure(Path(path)), Path(path).name, RADCURE, measured=False)


def concatenate(parts: Sequence[Cohorts]) -> Cohorts:
    ids = tuple(pid for part in parts for pid in part.patient_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("a patient id appears twice in the training cohorts")
    return Cohorts(
        ids,
        np.concatenate([p.groups for p in parts]),
        np.concatenate([p.cohorts for p in parts]),
        tuple(r for p in parts for r in p.raws),
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.event for p in parts]),
        np.concatenate([p.hpv for p in parts]),
    )


def load_cohorts(table: Path, suvmax: Path | None, radcure: Path | None, radiomics: Path | None = None) -> Cohorts:
    """HECKTOR (and RADCURE when ``radcure`` is given) as one :class:`Cohorts`."""
    parts = [load_hecktor(table, suvmax, radiomics)]
    if radcure is not None:
        parts.append(load_radcure_cohort(radcure))
    return concatenate(parts)
