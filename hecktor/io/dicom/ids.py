"""``--id-from``: the CSV that maps each DICOM PatientID to the pseudonym used as the case ID.

Format: a header row, then one row per patient, with the columns ``PatientID`` and ``case_id`` (alias
``pseudonym``), names case-insensitive, other columns ignored; values are stripped of surrounding spaces::

    PatientID,case_id
    0012345678,HN-0001

With a mapping, a study whose PatientID is not in it is refused (its case fails, naming the study's folder, not
the PatientID): falling back to the real PatientID would put it into folder names, ``case.json`` and logs, which
is what the mapping is there to prevent. ``case.json`` then holds the pseudonym, never the PatientID.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from hecktor.core.types import InputError

__all__ = ["read_pseudonyms"]

_PATIENT_COLUMN = "patientid"
_ID_COLUMNS = ("case_id", "pseudonym")


def read_pseudonyms(path: Path) -> Mapping[str, str]:
    """PatientID -> pseudonym from the ``--id-from`` CSV; :class:`InputError` naming the file and line on a
    missing column, an empty value or a PatientID given twice with different pseudonyms."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {str(name).strip().lower(): name for name in reader.fieldnames or () if name is not None}
            id_column = next((columns[c] for c in _ID_COLUMNS if c in columns), None)
            if _PATIENT_COLUMN not in columns or id_column is None:
                raise InputError(f"{path}: the --id-from table needs the columns PatientID and case_id (or "
                                 f"pseudonym), found {sorted(columns)}")
            mapping: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                patient_id = str(row.get(columns[_PATIENT_COLUMN]) or "").strip()
                pseudonym = str(row.get(id_column) or "").strip()
                if not patient_id and not pseudonym:
                    continue  # a blank line
                if not patient_id or not pseudonym:
                    raise InputError(f"{path} line {line}: PatientID and {id_column} must both be given")
                if mapping.get(patient_id, pseudonym) != pseudonym:
                    # The PatientID itself is not repeated: the message may reach logs.
                    raise InputError(f"{path} line {line}: this PatientID was already given another {id_column}")
                mapping[patient_id] = pseudonym
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the --id-from table ({exc})") from exc
    return mapping
