"""Read the clinical record (``ehr.json``, or one row of a training table) into a :class:`ClinicalRecord`.

The organisers' files are not consistent: keys come with different spellings (``Tobacco``,
``Tobacco Consumption``, a stray ``"Tobacco Consumption:"``), values may be absent, null, numbers,
numbers written as strings, or words (``"yes"``, ``"M"``, ``"M0"``). A run on an unseen centre must
not fail because of that, so every field is parsed leniently and anything that cannot be read, or
lies outside its clinical range, becomes ``None`` (unknown) with a logged warning naming the key; the
models then impute it.

:func:`parse_ehr` raises :class:`InputError` (one line, naming the file) only when the file as a whole
cannot be used, and never anything else: it is not a readable regular file, it is larger than
:data:`MAX_EHR_BYTES`, it is not UTF-8 text, it is not JSON, it nests deeper than :data:`MAX_NESTING`
levels, or its top level is not an object. Each of these is checked before the step it protects
(size before reading everything, nesting before the recursive JSON parser, the file type before an
``open`` that would block on a FIFO), rather than caught afterwards.
"""

from __future__ import annotations

import codecs
import difflib
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hecktor.core.types import ClinicalRecord, InputError

__all__ = [
    "DOCUMENTED_KEYS",
    "KEY_ALIASES",
    "KNOWN_UNUSED_KEYS",
    "MAX_EHR_BYTES",
    "MAX_NESTING",
    "clinical_record_from_mapping",
    "is_known_key",
    "normalise_key",
    "parse_ehr",
    "read_ehr",
    "read_ehr_keys",
    "unknown_key_message",
    "unknown_keys_summary",
]

logger = logging.getLogger(__name__)

# The organisers' example is about 200 bytes; a megabyte is already absurd for nine fields.
MAX_EHR_BYTES = 1 << 20
# The record is flat (depth 1); anything deeper than this is not a clinical record, and the bound keeps
# the recursive JSON parser far from Python's recursion limit.
MAX_NESTING = 32

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

# Keys the organisers use that no model reads: known, never reported as unknown (normalised spellings).
# T-stage and N-stage are in the training tables only; PatientID names the row of a table.
KNOWN_UNUSED_KEYS = frozenset({"patientid", "patient id", "t stage", "tstage", "n stage", "nstage"})

# Every documented spelling as written (the organisers' own first): what an unknown key is compared with
# to suggest the nearest. Their normalised forms are exactly KEY_ALIASES' keys and KNOWN_UNUSED_KEYS.
DOCUMENTED_KEYS = (
    "CenterID", "Age", "Gender", "Tobacco Consumption", "Alcohol Consumption", "Performance Status", "Treatment",
    "M-stage", "HPV Status", "Center ID", "CentreID", "Centre ID", "Center", "Centre", "Sex", "Tobacco", "Alcohol",
    "Performance", "Mstage", "HPV", "PatientID", "Patient ID", "T-stage", "Tstage", "N-stage", "Nstage",
)
# A typo of a documented key scores above this (difflib's ratio: "agee"/"age" 0.86); unrelated words do not.
_SUGGESTION_CUTOFF = 0.75
_MAX_UNKNOWN_KEYS_SHOWN = 5

_MISSING_WORDS = frozenset({"", "nan", "na", "n/a", "none", "null", "unknown", "missing", "?", "-"})
_TRUE_WORDS = frozenset({"yes", "y", "true", "t", "positive", "pos"})
_FALSE_WORDS = frozenset({"no", "n", "false", "f", "negative", "neg"})

# Digits, one optional decimal point or comma, optional exponent. Stricter than float(), which would
# also take "1_000", "infinity" or non-ASCII digits. Linear-time on long strings (no nested repeats).
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# A JSON string (the terminator also accepts the end of the text, so the match never fails and never
# backtracks on an unterminated string) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)

# Python refuses int(text) beyond sys.get_int_max_str_digits() (4300 by default) and float(int)
# overflows beyond ~309 digits; no clinical value is that long, so longer integers are read as floats
# (possibly inf) and the range checks reject them like any other implausible number.
_MAX_EXACT_INT_DIGITS = 100
_MAX_CENTER_ID = 2**31 - 1
_MAX_WARNINGS = 20  # per record: a hostile file with thousands of bad keys must not flood the log
_SHOWN_CHARS = 60


class _UnparsableError(ValueError):
    """A value that is present but cannot be read as the field's type."""


class _JsonObject(dict[str, Any]):
    """A JSON object that also keeps every (key, value) pair in file order, duplicate keys included.

    ``json`` keeps only the last of duplicate keys, silently; the pairs let the record apply the same
    rule as for two spellings of one key (first readable value wins, disagreement logged).
    """

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = tuple(pairs)


def normalise_key(key: str) -> str:
    """Lower-case, trim, drop trailing colons and unify separators so spelling variants compare equal."""
    text = str(key).strip().lower().rstrip(":").strip()
    text = re.sub(r"[\s_\-]+", " ", text)
    return text


def is_known_key(key: str) -> bool:
    """Whether ``key`` is one of the documented spellings (after :func:`normalise_key`)."""
    normalised = normalise_key(key)
    return normalised in KEY_ALIASES or normalised in KNOWN_UNUSED_KEYS


def unknown_key_message(key: str) -> str:
    """``'Agee': did you mean 'Age'?``; without a suggestion when no documented spelling is close."""
    by_normalised = {normalise_key(k): k for k in DOCUMENTED_KEYS}
    close = difflib.get_close_matches(normalise_key(key), list(by_normalised), n=1, cutoff=_SUGGESTION_CUTOFF)
    suggestion = f": did you mean {by_normalised[close[0]]!r}?" if close else " matches no documented key"
    return f"{_shown(key)}{suggestion}"


def _unknown_keys(keys: Iterable[Any]) -> list[str]:
    """One message per distinct unknown text key, in file order."""
    unknown = dict.fromkeys(k for k in keys if isinstance(k, str) and not is_known_key(k))
    return [unknown_key_message(k) for k in unknown]


def _shown(value: Any) -> str:
    """A short, one-line, log-safe rendering: a hostile value can be a megabyte long."""
    if isinstance(value, str):
        if len(value) <= _SHOWN_CHARS:
            return repr(value)
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() itself raises ValueError beyond the int-digit limit.
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    try:
        text = repr(value)
    except Exception:  # a table cell can hold any object; its repr must not break parsing
        return f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."


def _shown_path(path: Path) -> str:
    """The path as text; escaped when it holds control characters, so the message stays one line."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _plain(value: Any) -> Any:
    """numpy scalars (table rows) -> Python scalars, so the checks below see int/float/bool."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError, AttributeError):
            return value
    return value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_WORDS


def _number_from_text(value: str) -> float:
    text = value.strip()
    if not _NUMBER_TEXT.fullmatch(text):
        raise _UnparsableError(f"not a number: {_shown(value)}")
    return float(text.replace(",", "."))


def _as_number(value: Any) -> float:
    """A finite float from a number or a numeric string.

    A bool is refused: ``"Age": true`` says nothing about the age (Python would take it as 1).
    """
    if isinstance(value, bool):
        raise _UnparsableError(f"{str(value).lower()} is a yes/no value, not a number")
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError as exc:
            raise _UnparsableError(f"{_shown(value)} is too large") from exc
    elif isinstance(value, float):
        number = float(value)
    elif isinstance(value, str):
        number = _number_from_text(value)
    else:
        raise _UnparsableError(f"unexpected type {type(value).__name__}: {_shown(value)}")
    if not math.isfinite(number):
        raise _UnparsableError(f"{_shown(value)} is infinite (or too large to represent)")
    return number


def _zero_or_one(value: Any) -> float:
    number = _as_number(value)
    if number not in (0.0, 1.0):
        raise _UnparsableError(f"not 0/1: {_shown(value)}")
    return number


def _parse_yes_no(value: Any) -> float:
    """Tobacco, alcohol, HPV status: true/false, yes/no style words, or 0/1."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return 1.0
        if word in _FALSE_WORDS:
            return 0.0
    return _zero_or_one(value)


def _parse_gender(value: Any) -> float:
    """1 = male, 0 = female; older files say ``"M"``/``"F"``. A yes/no answer says nothing about sex."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("m", "male", "man"):
            return 1.0
        if word in ("f", "female", "woman", "w"):
            return 0.0
    return _zero_or_one(value)


def _parse_m_stage(value: Any) -> float | None:
    """``M0`` -> 0, ``M1`` (any sub-stage) -> 1, ``Mx`` -> unknown; plain 0/1 are accepted too."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("mx", "x"):
            return None
        match = re.fullmatch(r"m?\s*([01])[a-c]?", word)
        if match:
            return float(match.group(1))
    return _zero_or_one(value)


def _parse_treatment(value: Any) -> float:
    """1 = chemoradiotherapy, 0 = radiotherapy alone; words are accepted for robustness."""
    if isinstance(value, str):
        word = value.strip().lower()
        if "chemo" in word:
            return 1.0
        if word in ("rt", "radiotherapy", "radiotherapy alone", "rt alone"):
            return 0.0
    return _zero_or_one(value)


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
    """Any whole number in [0, 2^31); unseen ids are expected and kept (for logging only)."""
    number = _as_number(value)
    if not 0 <= number <= _MAX_CENTER_ID or number != round(number):
        raise _UnparsableError(f"{_shown(value)} is not a whole number in [0, {_MAX_CENTER_ID}]")
    return number


_PARSERS: dict[str, Callable[[Any], float | None]] = {
    "center_id": _parse_center,
    "age": _parse_age,
    "gender_male": _parse_gender,
    "tobacco": _parse_yes_no,
    "alcohol": _parse_yes_no,
    "performance_status": _ranged(0.0, 4.0, integer=True),
    "treatment_chemoradiotherapy": _parse_treatment,
    "m_stage": _parse_m_stage,
    "hpv_positive": _parse_yes_no,
}


def _field_of(key: Any) -> str | None:
    """The record field a key names; non-text keys (possible in table rows) name none."""
    return KEY_ALIASES.get(normalise_key(key)) if isinstance(key, str) else None


def _parse_value(field_name: str, value: Any) -> float | None:
    """The field's value, ``None`` when it is given as missing; :class:`_UnparsableError` otherwise."""
    value = _plain(value)
    if _is_missing(value):
        return None
    return _PARSERS[field_name](value)


def _log_problems(source: str, problems: list[str]) -> None:
    for problem in problems[:_MAX_WARNINGS]:
        logger.warning("%s: %s", source, problem)
    if len(problems) > _MAX_WARNINGS:
        logger.warning("%s: %d further problems not shown", source, len(problems) - _MAX_WARNINGS)


def _record_and_problems(pairs: Iterable[tuple[Any, Any]]) -> tuple[ClinicalRecord, list[str]]:
    """The record, and one line per value that was present but could not be used."""
    values: dict[str, float] = {}
    problems: list[str] = []
    seen_keys: set[str] = set()
    for key, value in pairs:
        field_name = _field_of(key)
        if field_name is None:
            logger.debug("key %s not used", _shown(key))
            continue
        if key in seen_keys:
            problems.append(f"{_shown(key)} appears more than once")
        seen_keys.add(key)
        try:
            parsed = _parse_value(field_name, value)
        except _UnparsableError as exc:
            problems.append(f"{_shown(key)} ignored (treated as unknown): {exc}")
            continue
        if parsed is None:
            continue
        previous = values.setdefault(field_name, parsed)
        if previous != parsed:
            problems.append(
                f"{_shown(key)}={_shown(value)} disagrees with an earlier value ({previous:g}); keeping the first"
            )
    center = values.pop("center_id", None)
    return ClinicalRecord(**values, center_id=None if center is None else int(center)), problems


def _record_from_pairs(pairs: Iterable[tuple[Any, Any]], source: str) -> ClinicalRecord:
    record, problems = _record_and_problems(pairs)
    _log_problems(source, problems)
    return record


def clinical_record_from_mapping(d: Mapping[str, Any], source: str = "clinical record") -> ClinicalRecord:
    """Build a record from any mapping (parsed ``ehr.json`` or a table row); never raises on values.

    When two spellings of the same key are both present the first readable value wins; a
    disagreement is logged because it means the file is internally inconsistent.
    """
    return _record_from_pairs(d.items(), source)


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _os_reason(exc: OSError | ValueError) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).splitlines()[0]


def _read_capped(path: Path, shown: str) -> bytes:
    """At most ``MAX_EHR_BYTES`` of a regular file; anything else is an :class:`InputError`.

    The type is checked before opening (opening a FIFO for reading blocks until a writer appears)
    and again on the open descriptor, in case the path was swapped in between.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(f"{shown}: cannot read the clinical record ({_os_reason(exc)})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{shown}: clinical record is not a regular file ({_file_kind(info.st_mode)})")
    too_large = f"{shown}: clinical record is larger than {MAX_EHR_BYTES} bytes"
    if info.st_size > MAX_EHR_BYTES:
        raise InputError(too_large)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_EHR_BYTES + 1) if stat.S_ISREG(mode) else None
    except OSError as exc:
        raise InputError(f"{shown}: cannot read the clinical record ({_os_reason(exc)})") from exc
    if data is None:
        raise InputError(f"{shown}: clinical record is not a regular file ({_file_kind(mode)})")
    if len(data) > MAX_EHR_BYTES:  # the file grew after stat, or st_size lied (/proc, FUSE)
        raise InputError(too_large)
    return data


def _decode_utf8(data: bytes, shown: str) -> str:
    """UTF-8 text (a leading byte-order mark is tolerated); UTF-16/32 and binary data are refused."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # fmt: skip
        if data.startswith(bom):
            raise InputError(f"{shown}: clinical record is {name} text; it must be UTF-8")
    if b"\x00" in data:  # never valid in JSON text: UTF-16/32 without a byte-order mark, or binary
        raise InputError(f"{shown}: clinical record contains NUL bytes (UTF-16/32 or binary?); it must be UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{shown}: clinical record is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Whether brackets outside JSON strings nest deeper than ``limit``; stops at the first excess."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _json_int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_EXACT_INT_DIGITS else float(text)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _load_json_object(text: str, shown: str) -> _JsonObject:
    too_deep = f"{shown}: clinical record nests deeper than {MAX_NESTING} levels"
    if _nests_deeper_than(text, MAX_NESTING):
        raise InputError(too_deep)
    try:
        # strict=False: a raw tab or newline inside a string spoils that value at most, not the file.
        data = json.loads(text, object_pairs_hook=_JsonObject, parse_int=_json_int, strict=False)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{shown}: clinical record is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
        ) from exc
    except RecursionError as exc:  # unreachable after the nesting check; kept so the contract cannot break
        raise InputError(too_deep) from exc
    if not isinstance(data, _JsonObject):
        raise InputError(f"{shown}: clinical record must be a JSON object, got {_json_type(data)}")
    return data


def read_ehr(path: Path) -> tuple[ClinicalRecord, list[str]]:
    """Read ``ehr.json``: the record (unreadable values as ``None``) and one line per unreadable value.

    Nothing is logged: the caller decides what the value problems mean (the input policy). Raises
    :class:`InputError` (one line, naming the file) when the file as a whole cannot be used; never
    anything else.
    """
    path = Path(path)
    shown = _shown_path(path)
    text = _decode_utf8(_read_capped(path, shown), shown)
    return _record_and_problems(_load_json_object(text, shown).pairs)


def read_ehr_keys(path: Path) -> tuple[ClinicalRecord, list[str], list[str]]:
    """:func:`read_ehr`, plus one message per unknown key (``'Agee': did you mean 'Age'?``).

    Unknown keys are ignored by the record either way; whether they are a problem is the input policy's call.
    """
    path = Path(path)
    shown = _shown_path(path)
    data = _load_json_object(_decode_utf8(_read_capped(path, shown), shown), shown)
    record, unreadable = _record_and_problems(data.pairs)
    return record, unreadable, _unknown_keys(key for key, _ in data.pairs)


def unknown_keys_summary(messages: list[str]) -> str:
    """The first few unknown-key messages on one line, with a count of the rest."""
    hidden = len(messages) - _MAX_UNKNOWN_KEYS_SHOWN
    return "; ".join(messages[:_MAX_UNKNOWN_KEYS_SHOWN]) + (f" (and {hidden} more)" if hidden > 0 else "")


def parse_ehr(path: Path) -> ClinicalRecord:
    """Read ``ehr.json`` like :func:`read_ehr`, logging a warning for each unreadable value."""
    record, problems = read_ehr(path)
    _log_problems(_shown_path(Path(path)), problems)
    return record
