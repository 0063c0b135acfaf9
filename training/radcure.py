"""RADCURE clinical table -> the columns and codings of the HECKTOR 2025 training table (Tasks 2 and 3).

RADCURE (Welch et al., TCIA, CC BY 4.0; Princess Margaret Cancer Centre, Toronto) is an external
head-and-neck cohort used to train the RFS (Task 2) and HPV (Task 3) models next to the HECKTOR
development centres. Its clinical table has other column names and codings; :func:`load_radcure` returns
one row per patient under the HECKTOR table's column names, coded as the product reads ``ehr.json``
(:mod:`hecktor.io.clinical`), so the same training code can read both tables.

Mapping (RADCURE column / value -> HECKTOR column = ``ehr.json`` key / value); each rule is its own
function below, and its docstring states the assumption:

===================================  ==========================  ================================================
RADCURE                              HECKTOR / ``ehr.json``      rule
===================================  ==========================  ================================================
``patient_id``                       ``PatientID``               unchanged (``RADCURE-0304``)
(none)                               ``CenterID``                :data:`RADCURE_CENTER_ID` (100), LOCO group only
``Age``                              ``Age``                     unchanged (years, one decimal)
``Sex`` Male / Female                ``Gender``                  1 / 0 (:func:`map_sex`)
``Smoking Status`` Current /         ``Tobacco Consumption``     1 / 1 / 0 / missing (:func:`map_smoking_status`:
Ex-smoker / Non-smoker / unknown                                 ex-smokers count as consumers, see there)
(none)                               ``Alcohol Consumption``     missing: RADCURE does not record alcohol
``ECOG PS`` ECOG 0..4 /              ``Performance Status``      0..4 / missing / missing (:func:`map_ecog`)
ECOG 0-1 / Unknown
``Tx Modality`` + ``Chemo``          ``Treatment``               ChemoRT 1, RT + EGFRI 1, RT alone 0, Postop RT
                                                                 alone 0; contradicting ``Chemo`` -> missing
                                                                 (:func:`map_treatment`)
``M`` M0 / M1* / MX                  ``M-stage``                 "M0" / "M1" / "Mx" (:func:`map_m_stage`)
``HPV`` Yes, positive / Yes,         ``HPV Status``              1 / 0 / missing (:func:`map_hpv`)
Negative / empty
``RT Start``, ``Fx``, ``Last FU``,   ``RFS`` (days), ``Relapse``  :func:`recurrence_free_survival`
``Local``/``Regional``/``Distant``
and their dates
``Ds Site``, ``Subsite``, ``T``,     ``radcure_*``               provenance, never ``ehr.json`` inputs
``N``, ``Stage``, smoking, modality
===================================  ==========================  ================================================

RFS rule (see :func:`recurrence_free_survival`): time origin = RT start. Event (``Relapse`` = 1) = the
earliest of local, regional or distant recurrence (``Yes``) or persistent disease (``Persistent``), at its
recorded date; a persistent-disease date on or before RT start (RADCURE's placeholder for "never
disease-free", 62 of the 69 persistent records) is replaced by the nominal end of RT, RT start +
ceil(Fx / 5) weeks. ``Possible`` (an unconfirmed local recurrence, 1 patient) is not an event. Otherwise
censored (``Relapse`` = 0) at ``Last FU``; death without recurrence is censored, not an event (HECKTOR's
Task 2 target is recurrence, ``Relapse``; in this table ``Date of Death`` equals ``Last FU`` for every
dead patient, so "censored at last follow-up" is "censored at death" for them). Second primary cancers
(``2nd Ca``) are not recurrences and are ignored. Rows whose dates cannot give an RFS (unparseable or
missing RT start / last follow-up / event date, last follow-up not after RT start, a recurrence dated on
or before RT start) are dropped; the count and the patient ids are logged and kept in
``frame.attrs["radcure_dropped"]``.

Missing values stay missing (NaN): nothing is imputed here. Dates are month/day/year.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "HECKTOR_COLUMNS",
    "PROVENANCE_COLUMNS",
    "RADCURE_CENTER_ID",
    "RfsOutcome",
    "UnusableDatesError",
    "load_radcure",
    "map_ecog",
    "map_hpv",
    "map_m_stage",
    "map_radcure",
    "map_sex",
    "map_smoking_status",
    "map_treatment",
    "nominal_rt_end",
    "parse_date",
    "read_radcure_table",
    "recurrence_free_survival",
]

logger = logging.getLogger(__name__)

# HECKTOR training centres are 1-8 and the next edition's example uses 9; 100 stays clear of new HECKTOR
# centres, is a whole number (so hecktor.io.clinical reads it, unlike a string) and gives RADCURE its own
# leave-one-centre-out group. Like every CenterID it is never a model feature.
RADCURE_CENTER_ID = 100

HECKTOR_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "CenterID",
    "Age",
    "Gender",
    "Tobacco Consumption",
    "Alcohol Consumption",
    "Performance Status",
    "Treatment",
    "M-stage",
    "HPV Status",
    "Relapse",
    "RFS",
)
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "radcure_ds_site",
    "radcure_subsite",
    "radcure_t_stage",
    "radcure_n_stage",
    "radcure_stage",
    "radcure_smoking_status",
    "radcure_smoking_py",
    "radcure_tx_modality",
    "radcure_first_event",
)

DATE_FORMAT = "%m/%d/%Y"
OROPHARYNX = "oropharynx"
_EVENT_SITES = ("Local", "Regional", "Distant")
_REQUIRED = ("patient_id", "Age", "Sex", "ECOG PS", "Smoking Status", "Ds Site", "T", "N", "M", "HPV",
             "Tx Modality", "Chemo", "RT Start", "Fx", "Last FU", "Local", "Date Local", "Regional",
             "Date Regional", "Distant", "Date Distant")  # fmt: skip
_MISSING_WORDS = frozenset({"", "unknown", "na", "n/a", "nan", "none", "not tested", "not done"})


class UnusableDatesError(ValueError):
    """A row whose dates cannot give a recurrence-free survival time; the message says why."""


@dataclass(frozen=True)
class RfsOutcome:
    """Recurrence-free survival of one patient: ``days`` from RT start, ``event`` (recurrence or persistent
    disease), and ``first_event`` ("local", "regional", "distant", or several joined by "+" when they share
    the earliest date; ``None`` when censored)."""

    days: int
    event: bool
    first_event: str | None


def _word(value: Any) -> str | None:
    """Trimmed lower-case text with single spaces, or ``None`` for an empty cell (NaN, None, blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return " ".join(str(value).split()).lower() or None


def _text(value: Any) -> str | None:
    """Like :func:`_word`, and also ``None`` for a word meaning unknown (``unknown``, ``na``, ``none``...)."""
    word = _word(value)
    return None if word in _MISSING_WORDS else word


def map_sex(value: Any) -> float:
    """RADCURE ``Sex`` -> HECKTOR ``Gender``: ``Male`` -> 1, ``Female`` -> 0 (HECKTOR: 1 = male, 0 = female).

    Assumption: none beyond the coding; missing stays NaN. Any other value raises ``ValueError``.
    """
    word = _text(value)
    if word is None:
        return math.nan
    if word in ("male", "m"):
        return 1.0
    if word in ("female", "f"):
        return 0.0
    raise ValueError(f"unknown RADCURE Sex value {value!r}")


def map_smoking_status(value: Any, ex_smoker_as_consumer: bool = True) -> float:
    """RADCURE ``Smoking Status`` -> HECKTOR ``Tobacco Consumption`` (0/1).

    HECKTOR's coding: ``Tobacco Consumption`` is binary, 1 = consumes tobacco, 0 = does not; in the
    development table only MDA records it (184 of 444 patients = 41 % are 1) and the organisers define it no
    further: they do not say whether a former smoker counts as a consumer.

    Mapping: ``Current`` -> 1, ``Non-smoker`` -> 0, ``unknown``/missing -> NaN, and ``Ex-smoker`` -> 1 by
    default (``ex_smoker_as_consumer=True``: "ever smoked"), 0 with ``ex_smoker_as_consumer=False``
    ("smokes now"). Assumption behind the default: what carries prognostic and HPV information is lifetime
    tobacco exposure (head-and-neck risk groups use pack-years, not current status); RADCURE's ex-smokers
    have a median of 25 pack-years (current smokers 40, non-smokers 0). The HECKTOR table cannot settle
    the question: among RADCURE's HPV-positive oropharynx patients (the population closest to MDA's) the
    default gives 66 % consumers and the alternative 24 %, against MDA's 41 %. Pack-years stay available in
    ``radcure_smoking_py`` for a sensitivity analysis.
    """
    word = _text(value)
    if word is None:
        return math.nan
    if word in ("current", "current smoker"):
        return 1.0
    if word in ("ex-smoker", "ex smoker", "former", "former smoker"):
        return 1.0 if ex_smoker_as_consumer else 0.0
    if word in ("non-smoker", "non smoker", "never", "never smoker"):
        return 0.0
    raise ValueError(f"unknown RADCURE Smoking Status value {value!r}")


def map_ecog(value: Any) -> float:
    """RADCURE ``ECOG PS`` -> HECKTOR ``Performance Status`` (ECOG grade 0-4, the scale HECKTOR uses: its
    table holds 0, 1, 2, 3, 4 and the product accepts whole numbers 0-4).

    ``ECOG k`` -> k. ``Unknown``/missing -> NaN. ``ECOG 0-1`` (1 patient: a range, not a grade) -> NaN:
    assumption: choosing 0 or 1 would invent a value, and imputation is the model's job. Any other value
    raises ``ValueError``.
    """
    word = _text(value)
    if word is None:
        return math.nan
    grade = word.removeprefix("ecog").strip()
    if grade in ("0", "1", "2", "3", "4"):
        return float(grade)
    if grade in ("0-1", "1-2", "2-3", "3-4"):
        return math.nan
    raise ValueError(f"unknown RADCURE ECOG PS value {value!r}")


def map_treatment(tx_modality: Any, chemo: Any, egfri_as_chemoradiotherapy: bool = True) -> float:
    """RADCURE ``Tx Modality`` and ``Chemo`` -> HECKTOR ``Treatment`` (1 = chemoradiotherapy, 0 = radiotherapy
    alone: interface.md and :func:`hecktor.io.clinical._parse_treatment`; the HECKTOR table holds 0 and 1).

    ``ChemoRT`` -> 1; ``RT alone`` and ``Postop RT alone`` -> 0 (surgery is not part of HECKTOR's coding; no
    concurrent systemic therapy); ``RT + EGFRI`` (RT with concurrent cetuximab, 54 patients) -> 1 by
    default. Assumption: HECKTOR's binary contrasts RT alone with RT plus concurrent systemic therapy, and
    cetuximab-RT is the latter; HECKTOR does not say how its centres coded cetuximab.
    ``egfri_as_chemoradiotherapy=False`` gives NaN for these patients instead (unknown, not 0).
    ``Chemo`` must agree (``Yes`` with ChemoRT, ``none`` otherwise); when it contradicts the modality
    (1 patient: RT alone with Chemo = Yes) the treatment is NaN. Missing modality -> NaN.
    """
    modality = _text(tx_modality)
    given = _word(chemo)  # not _text: RADCURE writes "none" for "no chemotherapy", not for "unknown"
    if given in ("unknown", "na", "n/a", "nan"):
        given = None
    if given not in (None, "yes", "no", "none"):
        raise ValueError(f"unknown RADCURE Chemo value {chemo!r}")
    if modality is None:
        return math.nan
    if modality == "chemort":
        code = 1.0
    elif modality in ("rt alone", "postop rt alone"):
        code = 0.0
    elif modality == "rt + egfri":
        code = 1.0 if egfri_as_chemoradiotherapy else math.nan
    else:
        raise ValueError(f"unknown RADCURE Tx Modality value {tx_modality!r}")
    if given is not None and (given == "yes") != (modality == "chemort"):
        return math.nan
    return code


def map_m_stage(value: Any) -> str | None:
    """RADCURE ``M`` -> ``ehr.json`` ``M-stage`` string: ``M0`` -> "M0", ``M1``/``M1a``/... -> "M1", ``MX`` ->
    "Mx" (the forms :func:`hecktor.io.clinical._parse_m_stage` reads; "Mx" means unknown there). Missing ->
    ``None`` (NaN in the frame). Any other value raises ``ValueError``. In the RADCURE training split every
    patient is M0 (non-metastatic cohort treated with curative intent), so this column is constant.
    """
    word = _text(value)
    if word is None:
        return None
    if word in ("mx", "x"):
        return "Mx"
    if word in ("m0", "0"):
        return "M0"
    if re.fullmatch(r"m?1[a-c]?", word):
        return "M1"
    raise ValueError(f"unknown RADCURE M value {value!r}")


def map_hpv(value: Any) -> float:
    """RADCURE ``HPV`` -> HECKTOR ``HPV Status``: ``Yes, positive`` -> 1, ``Yes, Negative`` -> 0 (RADCURE's
    "Yes" means "tested"), empty (not tested or unknown) -> NaN. Assumption: none beyond the coding; RADCURE
    tests p16 or HPV as the clinic did, as HECKTOR's centres did. Any other value raises ``ValueError``.
    """
    word = _text(value)
    if word is None:
        return math.nan
    result = word.split(",")[-1].strip()
    if result in ("positive", "pos"):
        return 1.0
    if result in ("negative", "neg"):
        return 0.0
    raise ValueError(f"unknown RADCURE HPV value {value!r}")


def parse_date(value: Any) -> pd.Timestamp | None:
    """A month/day/year date (``6/24/2007``), or ``None`` when missing or not a valid date."""
    if _text(value) is None:
        return None
    try:
        return pd.Timestamp(pd.to_datetime(str(value).strip(), format=DATE_FORMAT))
    except (ValueError, TypeError):
        return None


def nominal_rt_end(rt_start: pd.Timestamp, fractions: int) -> pd.Timestamp:
    """Nominal end of RT: RT start + ceil(fractions / 5) weeks (five fractions a week), e.g. 35 fx -> 49 days."""
    return rt_start + pd.Timedelta(days=7 * math.ceil(fractions / 5))


def _event_flag(site: str, value: Any) -> str | None:
    """``Yes`` -> "recurrence", ``Persistent`` -> "persistent", ``Possible``/missing -> ``None`` (no event)."""
    word = _text(value)
    if word is None or word == "possible":
        return None
    if word in ("yes", "y"):
        return "recurrence"
    if word == "persistent":
        return "persistent"
    raise ValueError(f"unknown RADCURE {site} value {value!r}")


def recurrence_free_survival(
    rt_start: Any,
    last_fu: Any,
    fractions: Any,
    events: Mapping[str, tuple[Any, Any]],
) -> RfsOutcome:
    """Recurrence-free survival of one RADCURE patient, in whole days from RT start.

    Args:
        rt_start: ``RT Start`` (month/day/year text).
        last_fu: ``Last FU`` (month/day/year text).
        fractions: ``Fx``, the number of RT fractions (used only for persistent disease dated at RT start).
        events: site name ("Local", "Regional", "Distant") -> (flag, date text), the ``Local``/``Date Local``
            ... columns.

    Rule: event = the earliest of the recurrences (``Yes``) and persistent disease (``Persistent``) over the
    three sites, at its recorded date. A persistent-disease date on or before RT start is RADCURE's
    placeholder ("never disease-free"; 62 of 69 persistent records are dated exactly on RT start): the event
    is put at the nominal end of RT (:func:`nominal_rt_end`), the first time at which disease can be called
    persistent rather than still responding; this also keeps event times positive. ``Possible`` is not an
    event. Without an event: censored at ``Last FU``, whether the patient is alive or dead (death without
    recurrence is censored: HECKTOR's target is recurrence).

    Raises:
        UnusableDatesError: RT start or last follow-up missing or not a date; last follow-up not after RT
            start; an event without a readable date; a recurrence (``Yes``) dated on or before RT start (a
            recurrence needs a treatment to recur after: such a date is an error or disease present at
            baseline, which this endpoint cannot represent); persistent disease dated at RT start with no
            fraction count.
        ValueError: an event flag this code does not know.
    """
    start = parse_date(rt_start)
    if start is None:
        raise UnusableDatesError(f"RT Start {rt_start!r} is not a month/day/year date")
    end = parse_date(last_fu)
    if end is None:
        raise UnusableDatesError(f"Last FU {last_fu!r} is not a month/day/year date")
    if end <= start:
        raise UnusableDatesError(f"Last FU {last_fu} is not after RT Start {rt_start}")
    times: dict[str, pd.Timestamp] = {}
    for site, (flag_value, date_value) in events.items():
        flag = _event_flag(site, flag_value)
        if flag is None:
            continue
        when = parse_date(date_value)
        if when is None:
            raise UnusableDatesError(f"{site} = {flag_value!r} has no readable date ({date_value!r})")
        if when <= start:
            if flag == "recurrence":
                raise UnusableDatesError(f"{site} recurrence dated {date_value}, on or before RT Start {rt_start}")
            if pd.isna(fractions):
                raise UnusableDatesError(f"persistent {site} dated at RT Start and no Fx to place it")
            when = nominal_rt_end(start, int(fractions))
        times[site.lower()] = when
    if not times:
        return RfsOutcome(days=(end - start).days, event=False, first_event=None)
    first = min(times.values())
    names = "+".join(name for name, when in times.items() if when == first)
    return RfsOutcome(days=(first - start).days, event=True, first_event=names)


def read_radcure_table(path: Path) -> pd.DataFrame:
    """The RADCURE CSV as text cells with trimmed column names (the file has ``"M "``); checks the columns.

    Raises:
        ValueError: a needed column is absent, or a patient id appears twice.
    """
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raw.columns = [" ".join(str(name).split()) for name in raw.columns]
    missing = [name for name in _REQUIRED if name not in raw.columns]
    if missing:
        raise ValueError(f"{path}: RADCURE table lacks column(s) {missing}")
    duplicated = raw["patient_id"][raw["patient_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: patient id(s) appear more than once: {duplicated[:5]}")
    return raw


def _number(value: Any) -> float:
    """A float from a text cell; NaN when missing or not a number (``na``, ``>50``)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def map_radcure(
    raw: pd.DataFrame,
    oropharynx_only: bool = False,
    ex_smoker_as_consumer: bool = True,
    egfri_as_chemoradiotherapy: bool = True,
) -> pd.DataFrame:
    """Map a RADCURE table (:func:`read_radcure_table`) to the HECKTOR columns (see the module docstring).

    Returns one row per usable patient, columns :data:`HECKTOR_COLUMNS` then :data:`PROVENANCE_COLUMNS`;
    numeric codes are float (NaN = missing) as in the HECKTOR table, ``M-stage`` is text or NaN. Rows
    dropped for unusable dates are logged (count and ids, as a warning) and listed with their reason in
    ``result.attrs["radcure_dropped"]`` (patient id -> reason).
    """
    table = raw
    if oropharynx_only:
        table = table[table["Ds Site"].map(_text) == OROPHARYNX]
    rows: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    possible = 0
    for record in table.to_dict("records"):
        patient = str(record["patient_id"]).strip()
        possible += sum(_text(record[site]) == "possible" for site in _EVENT_SITES)
        try:
            outcome = recurrence_free_survival(
                record["RT Start"], record["Last FU"], _number(record["Fx"]),
                {site: (record[site], record[f"Date {site}"]) for site in _EVENT_SITES},
            )  # fmt: skip
        except UnusableDatesError as exc:
            dropped[patient] = str(exc)
            continue
        rows.append({
            "PatientID": patient,
            "CenterID": RADCURE_CENTER_ID,
            "Age": _number(record["Age"]),
            "Gender": map_sex(record["Sex"]),
            "Tobacco Consumption": map_smoking_status(record["Smoking Status"], ex_smoker_as_consumer),
            "Alcohol Consumption": math.nan,
            "Performance Status": map_ecog(record["ECOG PS"]),
            "Treatment": map_treatment(record["Tx Modality"], record["Chemo"], egfri_as_chemoradiotherapy),
            "M-stage": map_m_stage(record["M"]),
            "HPV Status": map_hpv(record["HPV"]),
            "Relapse": 1.0 if outcome.event else 0.0,
            "RFS": float(outcome.days),
            "radcure_ds_site": record["Ds Site"],
            "radcure_subsite": record.get("Subsite"),
            "radcure_t_stage": record["T"],
            "radcure_n_stage": record["N"],
            "radcure_stage": record.get("Stage"),
            "radcure_smoking_status": record["Smoking Status"],
            "radcure_smoking_py": _number(record.get("Smoking PY")),
            "radcure_tx_modality": record["Tx Modality"],
            "radcure_first_event": outcome.first_event,
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=[*HECKTOR_COLUMNS, *PROVENANCE_COLUMNS])
    for name in ("M-stage", "radcure_ds_site", "radcure_subsite", "radcure_t_stage", "radcure_n_stage",
                 "radcure_stage", "radcure_smoking_status", "radcure_tx_modality", "radcure_first_event"):  # fmt: skip
        frame[name] = frame[name].astype(object).where(frame[name].notna(), np.nan)
    frame["CenterID"] = frame["CenterID"].astype(int)
    frame.attrs["radcure_dropped"] = dropped
    if dropped:
        logger.warning("RADCURE: dropped %d of %d patients with unusable dates: %s", len(dropped), len(table),
                       "; ".join(f"{patient}: {reason}" for patient, reason in dropped.items()))  # fmt: skip
    if possible:
        logger.info("RADCURE: %d 'Possible' recurrence record(s) not counted as events", possible)
    return frame


def load_radcure(path: Path, oropharynx_only: bool = False) -> pd.DataFrame:
    """Read the RADCURE clinical CSV and map it to the HECKTOR training-table columns, one row per patient.

    Args:
        path: ``radcure_clinical_training_split.csv`` (TCIA RADCURE clinical table, training split).
        oropharynx_only: keep only ``Ds Site`` = Oropharynx (HECKTOR's patients are mostly oropharynx).

    Returns:
        ``PatientID``, ``CenterID`` (:data:`RADCURE_CENTER_ID`), ``Age``, ``Gender``, ``Tobacco Consumption``,
        ``Alcohol Consumption`` (all NaN), ``Performance Status``, ``Treatment``, ``M-stage``, ``HPV Status``,
        ``Relapse``, ``RFS`` (days), then the ``radcure_*`` provenance columns. Missing values are NaN; rows
        with unusable dates are dropped and logged (see :func:`map_radcure`).
    """
    return map_radcure(read_radcure_table(Path(path)), oropharynx_only=oropharynx_only)
