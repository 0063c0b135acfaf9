"""ehr.json parsing: every documented variant gives a usable record and a finite prediction.

The official examples are read from ../shared/data; the variants are hand-written files in tmp.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import random
import shutil
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from helpers import CLINICAL_DIR

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.core.types import ClinicalRecord, InputError, Measurements
from hecktor.io.clinical import (
    DOCUMENTED_KEYS,
    KEY_ALIASES,
    KNOWN_UNUSED_KEYS,
    MAX_EHR_BYTES,
    MAX_NESTING,
    clinical_record_from_mapping,
    is_known_key,
    normalise_key,
    parse_ehr,
    read_ehr_keys,
)
from hecktor.outcome.predict import ClinicalModels, load_clinical_models, predict

OFFICIAL = ("ehr_example_official.json", "ehr_example_official_missing_values.json")


@pytest.fixture(scope="module")
def models() -> ClinicalModels:
    return load_clinical_models(DEFAULT_WEIGHTS_DIR / "rfs_model.json", DEFAULT_WEIGHTS_DIR / "hpv_model.json")


@pytest.fixture(scope="module")
def measurements() -> Measurements:
    return Measurements(
        gtvp_volume_ml=12.0,
        gtvn_volume_ml=8.0,
        gtvp_suvmax=14.0,
        gtvp_suvmean=7.0,
        gtvn_suvmax=9.0,
        gtvn_suvmean=5.0,
        tlg=84.0,
        nlg=40.0,
        node_count=2,
    )


def _write(tmp_path: Path, content: str | bytes, name: str = "ehr.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _assert_finite_prediction(models: ClinicalModels, record: ClinicalRecord, measurements: Measurements) -> None:
    pred = predict(models, record, measurements)
    assert math.isfinite(pred.rfs_risk)
    assert 0.0 <= pred.hpv_probability <= 1.0
    assert isinstance(pred.hpv_positive, bool)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_examples(name: str, models: ClinicalModels, measurements: Measurements) -> None:
    path = CLINICAL_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is not mounted)")
    record = parse_ehr(path)
    assert record.age in (56.0, 50.0)
    assert record.gender_male == 1.0
    assert record.m_stage == 0.0
    _assert_finite_prediction(models, record, measurements)


def test_official_example_values() -> None:
    path = CLINICAL_DIR / OFFICIAL[0]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is not mounted)")
    assert parse_ehr(path) == ClinicalRecord(
        age=56.0,
        gender_male=1.0,
        tobacco=0.0,
        alcohol=1.0,
        performance_status=0.0,
        treatment_chemoradiotherapy=0.0,
        m_stage=0.0,
        hpv_positive=None,
        center_id=5,
    )


# (file content, expected non-None fields). Every other field must be None.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "short_keys": (
        {"Age": 60, "Gender": 0, "Tobacco": 1, "Alcohol": 0, "Performance": 2, "HPV": 1, "Treatment": 1},
        {
            "age": 60,
            "gender_male": 0,
            "tobacco": 1,
            "alcohol": 0,
            "performance_status": 2,
            "hpv_positive": 1,
            "treatment_chemoradiotherapy": 1,
        },
    ),
    "stray_colon": ({"Tobacco Consumption:": 1, "Performance Status": 1}, {"tobacco": 1, "performance_status": 1}),
    "numbers_as_strings": (
        {"Age": "56", "Gender": "1.0", "Tobacco Consumption": "0", "Treatment": "1", "HPV Status": "0.0"},
        {"age": 56, "gender_male": 1, "tobacco": 0, "treatment_chemoradiotherapy": 1, "hpv_positive": 0},
    ),
    "words": (
        {"Gender": "F", "Alcohol Consumption": "yes", "Tobacco Consumption": "No", "HPV Status": "positive"},
        {"gender_male": 0, "alcohol": 1, "tobacco": 0, "hpv_positive": 1},
    ),
    "gender_m": ({"Gender": "M", "M-stage": "M1"}, {"gender_male": 1, "m_stage": 1}),
    "m_stage_x": ({"M-stage": "Mx", "Age": 70.5}, {"age": 70.5}),
    "nulls": ({"Age": None, "Gender": None, "Tobacco Consumption": None, "M-stage": None, "CenterID": None}, {}),
    "empty_object": ({}, {}),
    "case_and_whitespace": (
        {" age ": 45, "GENDER": 1, "hpv status": 1, "performance  status": 0, "m_stage": "m0"},
        {"age": 45, "gender_male": 1, "hpv_positive": 1, "performance_status": 0, "m_stage": 0},
    ),
    "unknown_centre": ({"CenterID": 9, "Age": 50}, {"center_id": 9, "age": 50}),
    "centre_as_string": ({"CenterID": "42"}, {"center_id": 42}),
    "booleans": (
        {"Tobacco Consumption": True, "Alcohol Consumption": False, "HPV Status": True},
        {"tobacco": 1, "alcohol": 0, "hpv_positive": 1},
    ),
    "unknown_keys": ({"Weight": 80, "T-stage": "T2", "Age": 61}, {"age": 61}),
    "unknown_words": ({"Age": "unknown", "Gender": "n/a", "Tobacco": ""}, {}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants(name: str, tmp_path: Path, models: ClinicalModels, measurements: Measurements) -> None:
    content, expected = VARIANTS[name]
    record = parse_ehr(_write(tmp_path, json.dumps(content)))
    for field in ClinicalRecord.__dataclass_fields__:
        assert getattr(record, field) == expected.get(field), field
    _assert_finite_prediction(models, record, measurements)


def test_nan_literal_and_bom(tmp_path: Path, models: ClinicalModels, measurements: Measurements) -> None:
    path = _write(tmp_path, '\ufeff{"Age": NaN, "Gender": 1}'.encode())
    record = parse_ehr(path)
    assert record.age is None and record.gender_male == 1.0
    _assert_finite_prediction(models, record, measurements)


@pytest.mark.parametrize(
    ("content", "field", "bad"),
    [
        ({"Age": -5}, "age", "Age"),
        ({"Performance Status": 9}, "performance_status", "Performance Status"),
        ({"Performance": 1.5}, "performance_status", "Performance"),
        ({"Gender": 3}, "gender_male", "Gender"),
        ({"Tobacco": "sometimes"}, "tobacco", "Tobacco"),
        ({"M-stage": "M7"}, "m_stage", "M-stage"),
        ({"CenterID": -1}, "center_id", "CenterID"),
        ({"CenterID": 2.5}, "center_id", "CenterID"),
        ({"CenterID": 1e12}, "center_id", "CenterID"),
        ({"Age": [56]}, "age", "Age"),
        ({"Age": {"value": 56}}, "age", "Age"),
        # A bool in a numeric field says nothing about the number (Python would read true as 1).
        ({"Age": True}, "age", "Age"),
        ({"Performance Status": True}, "performance_status", "Performance Status"),
        ({"Performance Status": False}, "performance_status", "Performance Status"),
        ({"CenterID": True}, "center_id", "CenterID"),
        # A yes/no answer says nothing about sex, the treatment given or the M-stage.
        ({"Gender": True}, "gender_male", "Gender"),
        ({"Gender": "yes"}, "gender_male", "Gender"),
        ({"Treatment": True}, "treatment_chemoradiotherapy", "Treatment"),
        ({"M-stage": False}, "m_stage", "M-stage"),
        ({"Age": float("inf")}, "age", "Age"),
        ({"Age": 1e300}, "age", "Age"),
        ({"Age": "5_6"}, "age", "Age"),
        ({"Age": "infinity"}, "age", "Age"),
        ({"Age": "\uff15\uff16"}, "age", "Age"),  # full-width digits: float() would take them
    ],
)
def test_out_of_range_becomes_unknown_with_warning(
    content: dict, field: str, bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, json.dumps(content))
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(path)
    assert getattr(record, field) is None
    assert any(bad in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_conflicting_spellings_keep_first_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = clinical_record_from_mapping({"Tobacco Consumption": 1, "Tobacco": 0})
    assert record.tobacco == 1.0
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_null_spelling_does_not_hide_other_spelling() -> None:
    assert clinical_record_from_mapping({"Tobacco Consumption": None, "Tobacco": 1}).tobacco == 1.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"Age: 56"', "JSON object"),
        (b"null", "JSON object"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
    ],
)
def test_unparsable_file_raises_input_error(content: bytes, problem: str, tmp_path: Path) -> None:
    path = _write(tmp_path, content, name="broken_ehr.json")
    with pytest.raises(InputError) as info:
        parse_ehr(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(InputError, match=r"absent\.json"):
        parse_ehr(path)


def test_table_row_with_numpy_values() -> None:
    """Training/score_table rows arrive as numpy scalars and NaN for empty cells."""
    row = {
        "PatientID": "X-1",
        "CenterID": np.float64(5.0),
        "Age": np.int64(64),
        "Gender": np.float64(0.0),
        "Tobacco Consumption": np.nan,
        "HPV Status": np.float64(1.0),
        "T-stage": "T2",
    }
    record = clinical_record_from_mapping(row)
    assert record == ClinicalRecord(age=64.0, gender_male=0.0, hpv_positive=1.0, center_id=5)


def test_centre_id_does_not_change_prediction(models: ClinicalModels, measurements: Measurements) -> None:
    """Test centres are unseen: the id is for logging only."""
    base = {"Age": 60, "Gender": 1, "Treatment": 1}
    preds = [predict(models, clinical_record_from_mapping({**base, "CenterID": c}), measurements) for c in (1, 5, 9)]
    assert len({(p.rfs_risk, p.hpv_probability) for p in preds}) == 1


# --------------------------------------------------------------------------- hostile files
# Contract: parse_ehr returns a ClinicalRecord or raises InputError (one line, naming the file); nothing else.


def _assert_input_error(path: Path, problem: str) -> InputError:
    with pytest.raises(InputError) as info:
        parse_ehr(path)
    message = str(info.value)
    assert str(path) in message and problem in message and "\n" not in message, message
    return info.value


def _warnings_about(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and repr(key) in r.getMessage()]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"Age": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"a":' * 10_000 + "1" + "}" * 10_000,
        "[" * 10_000,  # not even closed
    ],
    ids=["arrays", "inside_a_value", "objects", "unclosed"],
)
def test_deep_nesting_is_an_input_error(text: str, tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path, text), "nests deeper")


def test_nesting_limit_is_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The top-level object is level 1; brackets inside strings do not count."""
    inner = MAX_NESTING - 1
    at_limit = '{"Tobacco": "[[[[{{{{", "Age": ' + "[" * inner + "]" * inner + "}"
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(_write(tmp_path, at_limit))
    assert record.age is None and _warnings_about(caplog, "Age")
    over = '{"Age": ' + "[" * (inner + 1) + "]" * (inner + 1) + "}"
    _assert_input_error(_write(tmp_path, over, name="over.json"), f"deeper than {MAX_NESTING}")


@pytest.mark.parametrize(
    ("literal", "key", "field"),
    [
        ("9" * 400, "Age", "age"),  # float(int) overflows
        ("9" * 5000, "Age", "age"),  # beyond Python's int-digit limit
        ("-" + "9" * 5000, "CenterID", "center_id"),
        ("1" * 120, "Performance Status", "performance_status"),
        ("1e400", "Age", "age"),  # parses as inf
        ("-1e400", "Gender", "gender_male"),
        ("Infinity", "Performance Status", "performance_status"),
        ("-Infinity", "CenterID", "center_id"),
        ('"' + "7" * 500_000 + '"', "Age", "age"),
        ('"' + "x" * 500_000 + '"', "Tobacco", "tobacco"),
    ],
    ids=lambda v: v[:12] if isinstance(v, str) else str(v),
)
def test_numbers_beyond_any_range_become_unknown(
    literal: str, key: str, field: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, f'{{"{key}": {literal}, "Alcohol": 1}}')
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(path)
    assert getattr(record, field) is None and record.alcohol == 1.0
    messages = _warnings_about(caplog, key)
    assert messages and all(str(path) in m and len(m) < 400 for m in messages), messages  # long values are cut


def test_nan_literal_is_missing_without_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """NaN is how Python's json (and pandas) writes an empty cell: missing, not an error."""
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(_write(tmp_path, '{"Age": NaN, "HPV Status": NaN}'))
    assert record == ClinicalRecord()
    assert not _warnings_about(caplog, "Age")


def test_duplicate_keys_keep_the_first_value_and_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """json.loads would silently keep the LAST duplicate; the record applies its first-readable-wins rule."""
    path = _write(tmp_path, '{"Age": 50, "Gender": 1, "Age": 61, "Gender": 1, "HPV": "?", "HPV": 0}')
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(path)
    assert (record.age, record.gender_male, record.hpv_positive) == (50.0, 1.0, 0.0)
    age_messages = _warnings_about(caplog, "Age")
    assert any("more than once" in m for m in age_messages) and any("disagrees" in m for m in age_messages)
    assert any("more than once" in m for m in _warnings_about(caplog, "Gender"))


def test_long_key_and_control_characters(tmp_path: Path) -> None:
    content = '{"' + "K" * 900_000 + '": 1, "Age": "5\t6", "Gender": "M", "Tobacco": "\tyes\n"}'
    record = parse_ehr(_write(tmp_path, content))
    assert (record.age, record.gender_male, record.tobacco) == (None, 1.0, 1.0)


def test_lone_surrogate_escape_is_just_an_unreadable_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(_write(tmp_path, '{"Age": "\\ud800", "\\udc00": 1, "Gender": 0}'))
    assert record == ClinicalRecord(gender_male=0.0)
    assert all(m.isascii() or m.isprintable() for m in _warnings_about(caplog, "Age"))


def test_warnings_are_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Thousands of bad values (here repeats of one key) must not flood the log."""
    pairs = ", ".join(['"Age": "bad"'] * 5000)
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = parse_ehr(_write(tmp_path, "{" + pairs + "}"))
    assert record.age is None
    assert 1 < len(caplog.records) <= 25
    assert "further problems not shown" in caplog.records[-1].getMessage()


def test_size_limit(tmp_path: Path) -> None:
    body = b'{"Age": 61}'
    at_cap = _write(tmp_path, body + b" " * (MAX_EHR_BYTES - len(body)))
    assert parse_ehr(at_cap).age == 61.0
    over = _write(tmp_path, body + b" " * (MAX_EHR_BYTES - len(body) + 1), name="over.json")
    _assert_input_error(over, "larger than")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"Age": 61}'.encode("utf-16"), "UTF-16"),
        ('{"Age": 61}'.encode("utf-16-be"), "NUL"),
        ('{"Age": 61}'.encode("utf-32"), "UTF-32"),
        ('{"Age": 61, "Gender": "Mâle"}'.encode("latin-1"), "not UTF-8"),
        (b'{"Age": "\xed\xa0\x80"}', "not UTF-8"),  # an encoded surrogate
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL"),
        (b"{}{}", "not valid JSON"),
        (b'{"Age": 61,}', "not valid JSON"),
        (b"   ", "not valid JSON"),
        (b"true", "JSON object"),
        (b"1e400", "JSON object"),
    ],
)
def test_unusable_files(content: bytes, problem: str, tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path, content), problem)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    assert parse_ehr(_write(tmp_path, '\ufeff{"Age": 70}'.encode())).age == 70.0


def test_directory_named_ehr_json(tmp_path: Path) -> None:
    path = tmp_path / "ehr.json"
    path.mkdir()
    _assert_input_error(path, "directory")


def test_character_device_is_not_read(tmp_path: Path) -> None:
    """A link to /dev/zero would be an endless read without the regular-file check."""
    if not Path("/dev/zero").exists():
        pytest.skip("/dev/zero does not exist on this platform")
    path = tmp_path / "ehr.json"
    path.symlink_to("/dev/zero")
    _assert_input_error(path, "character device")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "ehr.json"
    os.mkfifo(path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(parse_ehr, path)
        try:
            error = future.exception(timeout=10)
        except concurrent.futures.TimeoutError:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader, then fail
            pytest.fail("parse_ehr blocked on a FIFO")
    assert isinstance(error, InputError) and "FIFO" in str(error) and str(path) in str(error)


def test_dangling_link(tmp_path: Path) -> None:
    dangling = tmp_path / "ehr.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    _assert_input_error(dangling, "cannot read")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="as root, permissions do not stop reading")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = _write(tmp_path, '{"Age": 61}', name="locked.json")
    locked.chmod(0)
    _assert_input_error(locked, "cannot read")


def test_odd_paths_give_one_line_messages(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="embedded null"):
        parse_ehr(tmp_path / "a\x00b.json")
    folder = tmp_path / "line\nbreak"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        parse_ehr(folder / "ehr.json")
    assert "\n" not in str(info.value) and "line\\nbreak" in str(info.value)


# Values no clinical field should accept; each is put in place of every value of a well-formed record.
_HOSTILE_VALUES = (
    "true", "false", "1e400", "-1e400", "9" * 400, "9" * 5000, "NaN", "Infinity", "-0", "5e-400",
    '"\\ud800"', '"' + "1" * 5000 + '"', "[" * 20 + "]" * 20, '{"x": {"y": 1}}', "[]", "{}", '""', '"M0 "',
)  # fmt: skip
_WELL_FORMED = {
    "CenterID": 3, "Age": 64, "Gender": 0, "Tobacco Consumption": 1, "Alcohol Consumption": 0,
    "Performance Status": 1, "Treatment": 1, "M-stage": "M1", "HPV Status": 0,
}  # fmt: skip
_FIELD_OF_KEY = {
    "CenterID": "center_id", "Age": "age", "Gender": "gender_male", "Tobacco Consumption": "tobacco",
    "Alcohol Consumption": "alcohol", "Performance Status": "performance_status",
    "Treatment": "treatment_chemoradiotherapy", "M-stage": "m_stage", "HPV Status": "hpv_positive",
}  # fmt: skip


def test_every_hostile_value_in_every_field(tmp_path: Path) -> None:
    """A hostile value spoils its own field at most: every other field keeps its value."""
    reference = parse_ehr(_write(tmp_path, json.dumps(_WELL_FORMED)))
    assert None not in (getattr(reference, f) for f in ClinicalRecord.__dataclass_fields__)
    for i, (key, field) in enumerate(_FIELD_OF_KEY.items()):
        for j, literal in enumerate(_HOSTILE_VALUES):
            others = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in _WELL_FORMED.items() if k != key)
            record = parse_ehr(_write(tmp_path, f'{{{others}, "{key}": {literal}}}', name=f"ehr_{i}_{j}.json"))
            for other in ClinicalRecord.__dataclass_fields__:
                if other != field:
                    assert getattr(record, other) == getattr(reference, other), (key, literal, other)


def test_random_corruptions_keep_the_contract(tmp_path: Path) -> None:
    """Seeded byte-level corruptions of a well-formed record: a record or an InputError, never anything else."""
    rng = random.Random(20250)
    original = json.dumps(_WELL_FORMED).encode()
    alphabet = b'{}[]":,.-+eE0123456789 \\\x00\xff\xc3tfnNaI'
    for n in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data) + 1)
            action = rng.random()
            if action < 0.4 and pos < len(data):
                data[pos] = rng.choice(alphabet)
            elif action < 0.7:
                data[pos:pos] = bytes([rng.choice(alphabet)]) * rng.choice((1, 1, 2, 50))
            else:
                del data[pos : pos + rng.randint(1, 4)]
        path = _write(tmp_path, bytes(data), name=f"ehr_{n}.json")
        try:
            record = parse_ehr(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:
            assert isinstance(record, ClinicalRecord)


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    "value",
    [10**5000, -(10**400), float("inf"), True, np.bool_(True), object(), _Unprintable(), b"56", Decimal("56"),
     np.array([1.0, 2.0]), np.float32("inf"), [56], {"a": 1}, "7" * 100_000],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_mapping_values_never_raise(value: object, caplog: pytest.LogCaptureFixture) -> None:
    """Table rows can hold any Python object; each becomes unknown with a short warning."""
    keys = ("Age", "CenterID", "Performance Status", "Gender", "Treatment", "M-stage")
    with caplog.at_level(logging.WARNING, logger="hecktor.io.clinical"):
        record = clinical_record_from_mapping({**dict.fromkeys(keys, value), "Alcohol": 0}, source="row 7")
    assert record == ClinicalRecord(alcohol=0.0)
    assert len(caplog.records) == len(keys)
    assert all("row 7" in r.getMessage() and len(r.getMessage()) < 400 for r in caplog.records)


# --- unknown keys -------------------------------------------------------------------------------------------


def test_misspelt_keys_are_named_with_the_nearest_documented_spelling(tmp_path):
    path = tmp_path / "ehr.json"
    path.write_text(json.dumps({"Agee": 61, "Tobaco Consumption": 1, "Notes": "x", "CenterID": 3, "M-stage": "M0",
                                "HPV Status": 1, "Tobacco Consumption:": 0, "T-stage": "T2"}))
    record, unreadable, unknown = read_ehr_keys(path)
    assert unreadable == []
    assert unknown == ["'Agee': did you mean 'Age'?", "'Tobaco Consumption': did you mean 'Tobacco Consumption'?",
                       "'Notes' matches no documented key"]
    assert record.age is None and record.tobacco == 0.0  # the misspelt value is not used


def test_every_documented_spelling_is_known_and_every_alias_documented():
    assert {normalise_key(k) for k in DOCUMENTED_KEYS} == set(KEY_ALIASES) | KNOWN_UNUSED_KEYS
    for key in ("CenterID", "M-stage", "HPV Status", "Tobacco", "Performance", "centre_id", "T-stage"):
        assert is_known_key(key), key


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_unknown_keys_follow_the_input_policy(tmp_path, phantom_case_dir, strict, caplog):
    from hecktor.core.policy import apply_input_policy
    from hecktor.io.read import read_case

    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    (case_dir / "ehr.json").write_text(json.dumps({"Agee": 61, "Tobaco Consumption": 1, "CenterID": 3,
                                                   "M-stage": "M0", "Gender": 1}))
    case = read_case(case_dir)
    [problem] = case.problems
    assert problem.code == "ehr-unknown-key" and problem.fallback.startswith("ignored")
    assert "CenterID" not in problem.problem and "M-stage" not in problem.problem
    if strict:
        with pytest.raises(InputError, match=r"ehr\.json.*'Agee': did you mean 'Age'\?"):
            apply_input_policy(case.problems, strict=True)
    else:
        with caplog.at_level(logging.WARNING):
            apply_input_policy(case.problems, strict=False)
        assert "'Tobaco Consumption': did you mean 'Tobacco Consumption'?" in caplog.text
    assert case.clinical.gender_male == 1.0
