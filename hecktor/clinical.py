"""Read the clinical record (``ehr.json``, or one row of a training table) into a :class:`ClinicalRecord`.

The organisers' files are not consistent: keys come with different spellings (``Tobacco``,
``Tobacco Consumption``, a stray ``"Tobacco Consumption:"``), values may be absent, null, numbers,
numbers written as strings, or words (``"yes"``, ``"M"``, ``"M0"``). A run on an unseen centre must
not fail because of that, so every field is parsed leniently and anything that cannot be read, or
lies outside its clinical range, becomes ``None`` (unknown) with a logged warning; the models then
impute it. Only a file that is not a JSON object at all is an error, because then nothing in it can
be trusted.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hecktor.types import ClinicalRecord, InputError

__all__ = ["KEY_ALIASES", "clinical_record_from_mapping", "normalise_key", "parse_ehr"]

logger = logging.getLogger(__name__)

# Normalised key (see ``normalise_key``) -> ClinicalRecord field. Several spellings per field.
KEY_ALIASES: dict[str, str] = {
    "centerid": "center_id",
    "center id": "center_id",
    "centreid": "center_id",
    "centre id": "center_id",
    "center": "center_id",
    "centre": "center_id",
    "age": "age",
    "gender": "gender_male",
    "sex": "gender_male",
    "tobacco consumption": "tobacco",
    "tobacco": "tobacco",
    "alcohol consumption": "alcohol",
    "alcohol": "alcohol",
    "performance status": "performance_status",
    "performance": "performance_status",
    "treatment": "treatment_chemoradiotherapy",
    "m stage": "m_stage",
    "mstage": "m_stage",
    "hpv status": "hpv_positive",
    "hpv": "hpv_positive",
}

_MISSING_WORDS = frozenset({"", "nan", "na", "n/a", "none", "null", "unknown", "missing", "?", "-"})
_TRUE_WORDS = frozenset({"yes", "y", "true", "t", "positive", "pos"})
_FALSE_WORDS = frozenset({"no", "n", "false", "f", "negative", "neg"})


class _UnparsableError(ValueError):
    """A value that is present but cannot be read as the field's type."""


def normalise_key(key: str) -> str:
    """Lower-case, trim, drop trailing colons and unify separators so spelling variants compare equal."""
    text = str(key).strip().lower().rstrip(":").strip()
    text = re.sub(r"[\s_\-]+", " ", text)
    return text


def _plain(value: Any) -> Any:
    """numpy scalars (table rows) -> Python scalars, so the checks below see int/float/bool."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_WORDS


def _as_number(value: Any) -> float:
    """A finite float from a number or a numeric string; bool counts as 0/1."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "."))
        except ValueError as exc:
            raise _UnparsableError(f"not a number: {value!r}") from exc
    else:
        raise _UnparsableError(f"unexpected type {type(value).__name__}: {value!r}")
    if not math.isfinite(number):
        raise _UnparsableError(f"not finite: {value!r}")
    return number


def _as_binary(value: Any) -> float:
    """0/1 from numbers, numeric strings and yes/no style words."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return 1.0
        if word in _FALSE_WORDS:
            return 0.0
    number = _as_number(value)
    if number not in (0.0, 1.0):
        raise _UnparsableError(f"not 0/1: {value!r}")
    return number


def _parse_gender(value: Any) -> float:
    """1 = male, 0 = female; older files say ``"M"``/``"F"``."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("m", "male", "man"):
            return 1.0
        if word in ("f", "female", "woman", "w"):
            return 0.0
    return _as_binary(value)


def _parse_m_stage(value: Any) -> float | None:
    """``M0`` -> 0, ``M1`` (any sub-stage) -> 1, ``Mx`` -> unknown; plain 0/1 are accepted too."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("mx", "x"):
            return None
        match = re.fullmatch(r"m?\s*([01])[a-c]?", word)
        if match:
            return float(match.group(1))
    return _as_binary(value)


def _parse_treatment(value: Any) -> float:
    """1 = chemoradiotherapy, 0 = radiotherapy alone; words are accepted for robustness."""
    if isinstance(value, str):
        word = value.strip().lower()
        if "chemo" in word:
            return 1.0
        if word in ("rt", "radiotherapy", "radiotherapy alone", "rt alone"):
            return 0.0
    return _as_binary(value)


def _ranged(low: float, high: float, integer: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _as_number(value)
        if not low <= number <= high:
            raise _UnparsableError(f"{number:g} outside [{low:g}, {high:g}]")
        if integer and number != round(number):
            raise _UnparsableError(f"{number:g} is not a whole number")
        return number

    return parse


def _parse_age(value: Any) -> float:
    number = _as_number(value)
    if not 0.0 < number <= 120.0:
        raise _UnparsableError(f"{number:g} outside (0, 120]")
    return number


def _parse_center(value: Any) -> float:
    """Any whole number >= 0; unseen ids are expected and kept (for logging only)."""
    number = _as_number(value)
    if number < 0 or number != round(number):
        raise _UnparsableError(f"{value!r} is not a non-negative whole number")
    return number


_PARSERS: dict[str, Callable[[Any], float | None]] = {
    "center_id": _parse_center,
    "age": _parse_age,
    "gender_male": _parse_gender,
    "tobacco": _as_binary,
    "alcohol": _as_binary,
    "performance_status": _ranged(0.0, 4.0, integer=True),
    "treatment_chemoradiotherapy": _parse_treatment,
    "m_stage": _parse_m_stage,
    "hpv_positive": _as_binary,
}


def _parse_field(field_name: str, key: str, value: Any, source: str) -> float | None:
    value = _plain(value)
    if _is_missing(value):
        return None
    try:
        return _PARSERS[field_name](value)
    except _UnparsableError as exc:
        logger.warning("%s: %r ignored (treated as unknown): %s", source, key, exc)
        return None


def clinical_record_from_mapping(d: Mapping[str, Any], source: str = "clinical record") -> ClinicalRecord:
    """Build a record from any mapping (parsed ``ehr.json`` or a table row); never raises on values.

    When two spellings of the same key are both present the first readable value wins; a
    disagreement is logged because it means the file is internally inconsistent.
    """
    values: dict[str, float | None] = {}
    for key, value in d.items():
        field_name = KEY_ALIASES.get(normalise_key(key))
        if field_name is None:
            logger.debug("%s: key %r not used", source, key)
            continue
        parsed = _parse_field(field_name, key, value, source)
        if parsed is None:
            continue
        previous = values.get(field_name)
        if previous is None:
            values[field_name] = parsed
        elif previous != parsed:
            logger.warning(
                "%s: %r=%r disagrees with an earlier spelling (%g); keeping the first", source, key, value, previous
            )
    center = values.pop("center_id", None)
    return ClinicalRecord(**values, center_id=None if center is None else int(center))


def parse_ehr(path: Path) -> ClinicalRecord:
    """Read ``ehr.json``; raise :class:`InputError` naming the file when it is not a JSON object."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the clinical record ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: clinical record is not UTF-8 text ({exc.reason})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: clinical record is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: clinical record must be a JSON object, got {type(data).__name__}")
    return clinical_record_from_mapping(data, source=str(path))
