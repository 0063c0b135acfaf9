"""RADCURE -> HECKTOR column mapping (training/radcure.py).

Real rows of ../shared/data/clinical/radcure_clinical_training_split.csv were printed and their expected
values worked out by hand (the date arithmetic is in the comments); a tiny SYNTHETIC table covers the edge
cases of the RFS rule. Tests that need the real table skip when it is absent.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from helpers import CLINICAL_DIR

from hecktor.io.clinical import clinical_record_from_mapping
from training.radcure import (
    HECKTOR_COLUMNS,
    PROVENANCE_COLUMNS,
    RADCURE_CENTER_ID,
    UnusableDatesError,
    load_radcure,
    map_ecog,
    map_hpv,
    map_m_stage,
    map_radcure,
    map_sex,
    map_smoking_status,
    map_treatment,
    read_radcure_table,
    recurrence_free_survival,
)

RADCURE_CSV = CLINICAL_DIR / "radcure_clinical_training_split.csv"
HECKTOR_CSV = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
NAN = math.nan

# Hand-checked real rows. Columns: Gender, Tobacco, PS, Treatment, M-stage, HPV, Relapse, RFS days.
HAND_CHECKED: dict[str, tuple[float, float, float, float, str, float, float, float]] = {
    # Female, Current, ECOG 2, RT alone / Chemo none, M0, "Yes, Negative". RT Start 6/29/2002, Fx 35;
    # Local = Persistent dated 6/29/2002 (= RT start: the placeholder) -> nominal end of RT,
    # ceil(35 / 5) = 7 weeks = 49 days (8/17/2002), before Last FU 12/24/2002. Event at 49 days.
    "RADCURE-0711": (0, 1, 2, 0, "M0", 0, 1, 49),
    # Female, Current, ECOG 1, RT alone / none, M0, HPV empty. RT Start 10/5/2004; Regional Yes 4/26/2005,
    # Local Yes 12/23/2008 -> the earliest, regional: 10/5 -> 10/31 = 26, Nov 30, Dec 31, Jan 31,
    # Feb 28 (2005), Mar 31, Apr 26: 26+30+31+31+28+31+26 = 203 days.
    "RADCURE-0304": (0, 1, 1, 0, "M0", NAN, 1, 203),
    # Female, Ex-smoker (-> 1, ever smoked), ECOG 0, RT + EGFRI (-> 1), M0, "Yes, Negative". No recurrence,
    # Dead, Last FU 7/1/2007 (= Date of Death) -> censored. RT Start 7/30/2005: to 7/30/2006 = 365, to
    # 7/30/2007 = 365 more, minus 29 (7/1 -> 7/30) = 701 days.
    "RADCURE-0326": (0, 1, 0, 1, "M0", 0, 0, 701),
    # Male, Current, ECOG 2, RT alone / none, M0, "Yes, positive". RT Start 1/26/2003; Distant Yes 3/8/2004:
    # to 1/26/2004 = 365; then Jan 26 -> 31 = 5, Feb 29 (2004 is a leap year), Mar 8: 5+29+8 = 42.
    # 365 + 42 = 407 days.
    "RADCURE-0704": (1, 1, 2, 0, "M0", 1, 1, 407),
    # Male, Current, ECOG 0, ChemoRT / Yes, M0, HPV empty. RT Start 2/27/2007; Local Persistent 6/24/2007 (after
    # RT start: its own date), Regional Yes 6/24/2007 (same day), Distant Yes 9/10/2007. Earliest 6/24/2007:
    # Feb 27 -> 28 = 1, Mar 31, Apr 30, May 31, Jun 24: 1+31+30+31+24 = 117 days.
    "RADCURE-2989": (1, 1, 0, 1, "M0", NAN, 1, 117),
    # Male, Ex-smoker, ECOG 0, Tx Modality "RT alone" but Chemo "Yes" (contradiction -> Treatment NaN), M0,
    # "Yes, Negative". Alive, no recurrence, Last FU 12/20/2011. RT Start 8/4/2007: to 8/4/2011 = 4 * 365 + 1
    # (2/29/2008) = 1461; Aug 4 -> 31 = 27, Sep 30, Oct 31, Nov 30, Dec 20: 138. 1461 + 138 = 1599 days.
    "RADCURE-3219": (1, 1, 0, NAN, "M0", 0, 0, 1599),
}
# Recurrences dated on or before RT start: 1567 distant on RT start, 2454 distant 19 days before,
# 3060 regional on RT start, 3242 distant 11 days before.
DROPPED = {"RADCURE-1567", "RADCURE-2454", "RADCURE-3060", "RADCURE-3242"}


def _same(actual: object, expected: object) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return bool(pd.isna(actual))
    return actual == expected


@pytest.fixture(scope="module")
def radcure() -> pd.DataFrame:
    if not RADCURE_CSV.is_file():
        pytest.skip(f"RADCURE clinical table not found at {RADCURE_CSV} (../shared/data is not mounted)")
    return load_radcure(RADCURE_CSV)


@pytest.fixture(scope="module")
def raw_radcure() -> pd.DataFrame:
    if not RADCURE_CSV.is_file():
        pytest.skip(f"RADCURE clinical table not found at {RADCURE_CSV} (../shared/data is not mounted)")
    return read_radcure_table(RADCURE_CSV)


# ---------------------------------------------------------------- real table


@pytest.mark.parametrize("patient", sorted(HAND_CHECKED))
def test_hand_checked_rows(radcure: pd.DataFrame, patient: str) -> None:
    row = radcure.set_index("PatientID").loc[patient]
    names = ("Gender", "Tobacco Consumption", "Performance Status", "Treatment", "M-stage", "HPV Status",
             "Relapse", "RFS")  # fmt: skip
    for name, expected in zip(names, HAND_CHECKED[patient], strict=True):
        assert _same(row[name], expected), f"{patient} {name}: {row[name]!r} != {expected!r}"
    assert row["CenterID"] == RADCURE_CENTER_ID
    assert pd.isna(row["Alcohol Consumption"])


def test_columns_match_hecktor_table(radcure: pd.DataFrame) -> None:
    assert tuple(radcure.columns) == (*HECKTOR_COLUMNS, *PROVENANCE_COLUMNS)
    assert all(name.startswith("radcure_") for name in PROVENANCE_COLUMNS)
    if HECKTOR_CSV.is_file():
        hecktor = pd.read_csv(HECKTOR_CSV)
        shared = [name for name in HECKTOR_COLUMNS if name != "M-stage"]  # HECKTOR's table has no M-stage
        assert set(shared) <= set(hecktor.columns)
        for name in ("Gender", "Tobacco Consumption", "Treatment", "HPV Status", "Relapse"):
            assert set(radcure[name].dropna().unique()) <= set(hecktor[name].dropna().unique()) == {0.0, 1.0}
        assert set(radcure["Performance Status"].dropna().unique()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_readme_counts_on_the_raw_table(raw_radcure: pd.DataFrame) -> None:
    # README: 1800 patients, 776 oropharynx, HPV known for 780 (268 negative).
    assert len(raw_radcure) == 1800
    assert (raw_radcure["Ds Site"] == "Oropharynx").sum() == 776
    hpv = raw_radcure["HPV"].map(map_hpv)
    assert hpv.notna().sum() == 780
    assert (hpv == 0).sum() == 268


def test_counts_after_mapping(radcure: pd.DataFrame, raw_radcure: pd.DataFrame) -> None:
    assert set(radcure.attrs["radcure_dropped"]) == DROPPED
    assert len(radcure) == 1800 - len(DROPPED)
    assert radcure["PatientID"].is_unique
    # Of the dropped four only RADCURE-3060 is oropharynx, and only RADCURE-3242 has an HPV result (negative).
    assert (radcure["radcure_ds_site"] == "Oropharynx").sum() == 775
    assert radcure["HPV Status"].notna().sum() == 779
    assert (radcure["HPV Status"] == 0).sum() == 267
    assert int(radcure["Relapse"].sum()) == 444
    assert (radcure["RFS"] > 0).all()
    # Missing stays missing: 6 unknown smoking, 17 Unknown + 1 "ECOG 0-1", 1 contradictory treatment.
    assert radcure["Tobacco Consumption"].isna().sum() == 6
    assert radcure["Performance Status"].isna().sum() == 18
    assert radcure["Treatment"].isna().sum() == 1
    assert radcure["Alcohol Consumption"].isna().all()


def test_oropharynx_only(radcure: pd.DataFrame) -> None:
    opc = load_radcure(RADCURE_CSV, oropharynx_only=True)
    assert len(opc) == 775
    assert set(opc.attrs["radcure_dropped"]) == {"RADCURE-3060"}
    assert (opc["radcure_ds_site"] == "Oropharynx").all()
    pd.testing.assert_frame_equal(
        opc.reset_index(drop=True),
        radcure[radcure["radcure_ds_site"] == "Oropharynx"].reset_index(drop=True),
    )


def test_dropped_rows_are_logged(raw_radcure: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.radcure"):
        map_radcure(raw_radcure)
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "training.radcure"]
    assert any("dropped 4 of 1800" in message for message in messages)
    assert all(any(patient in message for message in messages) for patient in DROPPED)


def test_product_reads_every_mapped_row_without_problems(
    radcure: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    """The codes are the ones hecktor.io.clinical reads from ehr.json: no row yields a warning, and values agree."""
    keys = ("CenterID", "Age", "Gender", "Tobacco Consumption", "Alcohol Consumption", "Performance Status",
            "Treatment", "M-stage")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        records = [clinical_record_from_mapping({k: row[k] for k in keys}) for row in radcure.to_dict("records")]
    assert not [rec for rec in caplog.records if rec.name == "hecktor.io.clinical"]
    for row, record in zip(radcure.to_dict("records"), records, strict=True):
        assert record.center_id == RADCURE_CENTER_ID
        assert record.m_stage == 0.0
        for key, value in (("Gender", record.gender_male), ("Tobacco Consumption", record.tobacco),
                           ("Performance Status", record.performance_status),
                           ("Treatment", record.treatment_chemoradiotherapy)):  # fmt: skip
            assert (value is None) if pd.isna(row[key]) else (value == row[key])


# ---------------------------------------------------------------- synthetic table (edge cases)


def _synthetic_row(patient: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "patient_id": patient, "Age": "60.5", "Sex": "Male", "ECOG PS": "ECOG 1", "Smoking Status": "Current",
        "Smoking PY": "30", "Ds Site": "Oropharynx", "Subsite": "Tonsil", "T": "T2", "N": "N1", "M": "M0",
        "Stage": "III", "HPV": "Yes, positive", "Tx Modality": "ChemoRT", "Chemo": "Yes",
        "RT Start": "1/1/2001", "Fx": "35", "Last FU": "1/1/2002",
        "Local": np.nan, "Date Local": np.nan, "Regional": np.nan, "Date Regional": np.nan,
        "Distant": np.nan, "Date Distant": np.nan,
    }  # fmt: skip
    row.update(overrides)
    return row


def test_synthetic_edge_cases(caplog: pytest.LogCaptureFixture) -> None:
    raw = pd.DataFrame([
        # No recurrence: censored at last FU, 1/1/2001 -> 1/1/2002 = 365 days.
        _synthetic_row("censored"),
        # Two types: regional 3/1/2001 (59 days: Jan 31 + Feb 28) before local 6/1/2001 -> 59, first regional.
        _synthetic_row("two", Local="Yes", **{"Date Local": "6/1/2001"}, Regional="Yes",
                       **{"Date Regional": "3/1/2001"}),
        # Persistent with its own date 4/11/2001 (31+28+31+10 = 100 days) is an event at that date.
        _synthetic_row("persistent", Local="Persistent", **{"Date Local": "4/11/2001"}),
        # Persistent dated at RT start (placeholder), 25 fractions -> 5 weeks = 35 days.
        _synthetic_row("persistent0", Fx="25", Regional="Persistent", **{"Date Regional": "1/1/2001"}),
        # Unknown HPV, unknown smoking, Unknown ECOG: NaN, never filled. 'Possible' local is not an event.
        _synthetic_row("unknowns", HPV=np.nan, **{"Smoking Status": "unknown", "ECOG PS": "Unknown"},
                       Local="Possible", **{"Date Local": "6/1/2001"}),
        # Dead without recurrence: censored at last FU 7/2/2001 (31+28+31+30+31+30+1 = 182 days).
        _synthetic_row("dead", **{"Last FU": "7/2/2001"}, Sex="Female", **{"Tx Modality": "RT alone"},
                       Chemo="none", HPV="Yes, Negative"),
        # Unusable: a recurrence without a date; a last FU that is not a date; an event before RT start.
        _synthetic_row("nodate", Distant="Yes"),
        _synthetic_row("badfu", **{"Last FU": "2001-13-45"}),
        _synthetic_row("early", Distant="Yes", **{"Date Distant": "12/1/2000"}),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="training.radcure"):
        out = map_radcure(raw).set_index("PatientID")
    assert set(out.attrs["radcure_dropped"]) == {"nodate", "badfu", "early"}
    assert any("dropped 3 of 9" in rec.getMessage() for rec in caplog.records)
    expected = {  # patient: (RFS, Relapse, first event)
        "censored": (365, 0, None), "two": (59, 1, "regional"), "persistent": (100, 1, "local"),
        "persistent0": (35, 1, "regional"), "unknowns": (365, 0, None), "dead": (182, 0, None),
    }  # fmt: skip
    assert set(out.index) == set(expected)
    for patient, (days, relapse, first) in expected.items():
        assert out.loc[patient, "RFS"] == days, patient
        assert out.loc[patient, "Relapse"] == relapse, patient
        assert _same(out.loc[patient, "radcure_first_event"], NAN if first is None else first), patient
    assert pd.isna(out.loc["unknowns", ["HPV Status", "Tobacco Consumption", "Performance Status"]]).all()
    assert out.loc["dead", ["Gender", "Treatment", "HPV Status"]].tolist() == [0.0, 0.0, 0.0]
    assert out.loc["censored", ["Gender", "Treatment", "HPV Status", "Age"]].tolist() == [1.0, 1.0, 1.0, 60.5]
    assert map_radcure(raw, oropharynx_only=True).shape[0] == 6


# ---------------------------------------------------------------- single-value rules


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        (map_sex, "Male", 1.0), (map_sex, "Female", 0.0), (map_sex, np.nan, NAN),
        (map_smoking_status, "Current", 1.0), (map_smoking_status, "Ex-smoker", 1.0),
        (map_smoking_status, "Non-smoker", 0.0), (map_smoking_status, "unknown", NAN),
        (map_ecog, "ECOG 0", 0.0), (map_ecog, "ECOG 4", 4.0), (map_ecog, "ECOG 0-1", NAN), (map_ecog, "Unknown", NAN),
        (map_hpv, "Yes, positive", 1.0), (map_hpv, "Yes, Negative", 0.0), (map_hpv, np.nan, NAN),
        (map_m_stage, "M0", "M0"), (map_m_stage, "M1b", "M1"), (map_m_stage, "MX", "Mx"),
    ],
)  # fmt: skip
def test_single_value_rules(function: object, value: object, expected: object) -> None:
    assert _same(function(value), expected)  # type: ignore[operator]


def test_optional_codings() -> None:
    assert map_smoking_status("Ex-smoker", ex_smoker_as_consumer=False) == 0.0
    assert map_smoking_status("Current", ex_smoker_as_consumer=False) == 1.0
    assert map_treatment("RT + EGFRI", "none") == 1.0
    assert math.isnan(map_treatment("RT + EGFRI", "none", egfri_as_chemoradiotherapy=False))
    assert map_treatment("Postop RT alone", "none") == 0.0
    assert math.isnan(map_treatment("ChemoRT", "none"))  # contradiction -> unknown
    assert map_m_stage(np.nan) is None


@pytest.mark.parametrize(
    ("function", "value"),
    [(map_sex, "X"), (map_smoking_status, "Sometimes"), (map_ecog, "ECOG 5"), (map_hpv, "Yes, equivocal"),
     (map_m_stage, "M2")],
)  # fmt: skip
def test_unknown_values_raise(function: object, value: str) -> None:
    with pytest.raises(ValueError, match="unknown RADCURE"):
        function(value)  # type: ignore[operator]


def test_rfs_unknown_flag_raises_and_unusable_dates_are_typed() -> None:
    with pytest.raises(ValueError, match="unknown RADCURE Local"):
        recurrence_free_survival("1/1/2001", "1/1/2002", 35, {"Local": ("Maybe", "2/1/2001")})
    with pytest.raises(UnusableDatesError, match="not after"):
        recurrence_free_survival("1/1/2001", "1/1/2001", 35, {})
    with pytest.raises(UnusableDatesError, match="not a month/day/year"):
        recurrence_free_survival("2001-01-01", "1/1/2002", 35, {})  # ISO dates are not the table's format
