"""Score every row of a clinical CSV (the HECKTOR training-table layout) with the clinical models.

For batch checks and model comparison without images: each row is parsed by the same code as
``ehr.json`` (:func:`hecktor.io.clinical.clinical_record_from_mapping`) and featurised by the same
code as the container (:func:`hecktor.outcome.predict.raw_features`), using the table's reference-mask
volumes (``GTVp_volume_ml``, ``GTVn_volume_ml``) and, when present, SUVmax columns
(``gtvp_suvmax``/``MaxLesionSUV``, ``gtvn_suvmax``/``MaxLymphNodeSUV``), and radiomics columns under
their own names (:data:`hecktor.measure.radiomics.FEATURE_NAMES`, as ``python -m training radiomics`` writes them).
Missing columns are simply unknown values and get imputed. A column this product does not know (a typo such
as ``Agee``) is warned about with the nearest known name, or refuses the table with ``strict``.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hecktor.core.types import InputError
from hecktor.io.clinical import DOCUMENTED_KEYS, clinical_record_from_mapping, is_known_key
from hecktor.measure.radiomics import FEATURE_NAMES as RADIOMICS_FEATURES
from hecktor.outcome.predict import ClinicalModels, predict_from_features, raw_features

__all__ = ["OUTPUT_COLUMNS", "measured_from_row", "score_table", "unknown_columns"]

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("PatientID", "rfs_risk", "hpv_probability", "hpv_positive")

# Measurement name (as in ``Measurements``) -> accepted table column names, first match wins.
_MEASURED_COLUMNS: dict[str, tuple[str, ...]] = {
    "gtvp_volume_ml": ("GTVp_volume_ml", "gtvp_volume_ml"),
    "gtvn_volume_ml": ("GTVn_volume_ml", "gtvn_volume_ml"),
    "gtvp_suvmax": ("gtvp_suvmax", "MaxLesionSUV", "GTVp_SUVmax"),
    "gtvn_suvmax": ("gtvn_suvmax", "MaxLymphNodeSUV", "GTVn_SUVmax"),
}


# Columns of the organisers' training tables that no model reads (labels, counts) but that are not typos.
_TRAINING_TABLE_COLUMNS = ("Relapse", "RFS", "GTVp_voxels", "GTVn_voxels", "Total_tumor_volume_ml", "Task")
_SUGGESTION_CUTOFF = 0.75


def _known_columns() -> tuple[str, ...]:
    measured = [name for names in _MEASURED_COLUMNS.values() for name in names]
    return (*DOCUMENTED_KEYS, *measured, *RADIOMICS_FEATURES, *_TRAINING_TABLE_COLUMNS)


def unknown_columns(columns: list[str]) -> list[str]:
    """One message per column no model reads and no documented table has, with the nearest known name."""
    known = _known_columns()
    exact = set(known)
    messages = []
    for column in columns:
        if column in exact or is_known_key(str(column)):
            continue
        close = difflib.get_close_matches(str(column), known, n=1, cutoff=_SUGGESTION_CUTOFF)
        messages.append(f"{column!r}: did you mean {close[0]!r}?" if close else f"{column!r} matches no known column")
    return messages


def _check_columns(df: pd.DataFrame, in_csv: Path, strict: bool) -> None:
    unknown = unknown_columns([str(c) for c in df.columns])
    if not unknown:
        return
    text = f"{len(unknown)} unknown column(s): {'; '.join(unknown)}"
    if strict:
        raise InputError(f"{in_csv}: refused in strict mode: {text}")
    log.warning("%s: %s; ignored (their values are not used)", in_csv, text)


def measured_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's image measurements under ``Measurements`` names; absent columns are unknown."""
    out: dict[str, Any] = {}
    for name, candidates in _MEASURED_COLUMNS.items():
        out[name] = next((row[c] for c in candidates if c in row and not pd.isna(row[c])), None)
    out.update({name: row[name] for name in RADIOMICS_FEATURES if name in row and not pd.isna(row[name])})
    return out


def _read(in_csv: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(in_csv, dtype={"PatientID": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{in_csv}: cannot read the table ({exc})") from exc
    if "PatientID" not in df.columns:
        raise InputError(f"{in_csv}: required column 'PatientID' is missing (columns: {list(df.columns)})")
    return df


def _score_rows(df: pd.DataFrame, models: ClinicalModels, source: str) -> list[tuple[str, float, float, int]]:
    rows = []
    for row in df.to_dict(orient="records"):
        pid = str(row["PatientID"])
        record = clinical_record_from_mapping(row, source=f"{source}:{pid}")
        pred = predict_from_features(models, raw_features(record, measured_from_row(row)))
        rows.append((pid, pred.rfs_risk, pred.hpv_probability, int(pred.hpv_positive)))
    return rows


def _write_atomic(out_csv: Path, rows: list[tuple[str, float, float, int]]) -> None:
    """Temp file in the target directory, then ``os.replace``: readers never see a partial table."""
    fd, tmp = tempfile.mkstemp(dir=out_csv.parent, prefix=f".{out_csv.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(OUTPUT_COLUMNS)
            writer.writerows((pid, repr(risk), repr(prob), pos) for pid, risk, prob, pos in rows)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out_csv)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def score_table(in_csv: Path, out_csv: Path, models: ClinicalModels, strict: bool = False) -> int:
    """Write ``PatientID, rfs_risk, hpv_probability, hpv_positive`` (0/1) per row; return the row count.

    Raises :class:`InputError` naming the file when the input cannot be read or lacks ``PatientID``, or
    (``strict``) has columns no model reads and no documented table has (warned otherwise).
    """
    in_csv, out_csv = Path(in_csv), Path(out_csv)
    df = _read(in_csv)
    _check_columns(df, in_csv, strict)
    rows = _score_rows(df, models, in_csv.name)
    if not out_csv.parent.is_dir():
        raise InputError(f"{out_csv}: output directory does not exist")
    _write_atomic(out_csv, rows)
    return len(rows)
