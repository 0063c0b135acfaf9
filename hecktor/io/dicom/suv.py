"""PET to SUVbw from the DICOM header tags, following the QIBA/UPICT vendor-neutral pseudo-code.

What the factor multiplies: the modality-LUT value of each slice, ``stored * RescaleSlope + RescaleIntercept``,
with that slice's own slope (GE writes a different slope in every slice; on the raw PET of ``STS_001`` they
span 0.21 to 8.4). The caller applies the rescale; this module only reads the tags SUV needs. QIBA writes
``(stored + intercept) * slope``: the two agree because PET requires a zero intercept.

The rule by ``Units (0054,1001)``:

- ``BQML`` (Bq/mL): ``factor = weight_g / decayed_dose`` where ``decayed_dose`` is the injected dose brought to
  the time the images are decay-corrected to, read from ``DecayCorrection (0054,1102)``:

  - ``START``: the images are decay-corrected to the start of the acquisition, so the dose is decayed from
    injection to that moment: ``decayed_dose = dose * 2 ** (-decay_seconds / half_life)``. The start is the
    series date and time, unless an acquisition time is earlier (the series was made later, by post-processing
    or a re-reconstruction): then GE's private scan date and time ``(0009,100D)`` when present, else the
    earliest acquisition date and time over the slices (both as QIBA says).
  - ``ADMIN``: the images are already decay-corrected to the administration, so the dose is not decayed
    (``decay_seconds`` is 0).
  - ``NONE`` is refused: each slice would need its own bed's start and duration, and vendors do not record
    them alike (GE writes the series start as every slice's acquisition time), so no factor would be safe.

  The injection moment is ``RadiopharmaceuticalStartDateTime (0018,1078)`` or else
  ``RadiopharmaceuticalStartTime (0018,1072)`` on the scan reference's date; a start time later in the day
  than the scan reference is an injection before midnight for a scan after it, and is moved back a day.
- ``CNTS`` (Philips): the private ``SUV Scale Factor (7053,1000)`` is the factor itself; without it, the
  ``Activity Concentration Scale Factor (7053,1009)`` turns the modality-LUT value into Bq/mL and the
  ``BQML`` rule follows (``factor = ACSF * bqml_factor``). Both are per instance, hence ``per_slice_factor``
  when they differ between slices.
- ``GML``: already SUVbw (QIBA's reading of g/mL); the factor is 1.

A header that lacks what its rule needs raises ``MissingSuvTag`` naming the tag and what is wrong with it
(absent, zero, unparseable, implausible, inconsistent between slices): the series reader turns it into a
recoverable problem and falls back to the image-based estimate of ``hecktor.io.suv``, never to silent Bq/mL.
Tags the rule does not use (the half-life under ``ADMIN``, everything under ``GML``) are not required.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import DA, DT, TM

__all__ = ["MissingSuvTag", "SuvFromHeader", "suv_from_header"]

SUPPORTED_UNITS = ("BQML", "CNTS", "GML")
# Guards against values entered in the wrong unit, which would otherwise give a plausible-looking but wrong
# factor: a weight in grams reads as tens of tonnes, a dose in MBq as under a megabecquerel (every clinical
# PET injects tens to hundreds of MBq).
MAX_WEIGHT_KG = 500.0
MIN_DOSE_BQ = 1.0e6
# More than 10 half-lives (18 h for 18F) between injection and scan is a wrong date or time, not a protocol.
MAX_DECAY_HALF_LIVES = 10.0

_RP_SEQUENCE = "RadiopharmaceuticalInformationSequence"
_PHILIPS_CREATOR = "Philips PET Private Group"
_PHILIPS_SUV_SCALE = 0x00  # (7053,1000) in the creator's block
_PHILIPS_ACTIVITY_SCALE = 0x09  # (7053,1009)
_GE_CREATOR = "GEMS_PETD_01"
_GE_SCAN_DATETIME = 0x0D  # (0009,100D): GE's scan date and time, the decay-correction reference


class MissingSuvTag(Exception):  # noqa: N818 (the name the series reader and the issue use)
    """The header lacks what SUV needs: ``tag`` names the tag, ``reason`` says what is wrong with it."""

    def __init__(self, tag: str, reason: str) -> None:
        super().__init__(tag, reason)  # args kept so the exception pickles across worker processes
        self.tag = tag
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.tag}: {self.reason}"


@dataclass(frozen=True)
class SuvFromHeader:
    """How to turn a PET series' modality-LUT values into SUVbw.

    ``SUVbw = (stored * RescaleSlope + RescaleIntercept) * factor``, each slice with its own slope and
    intercept. When ``per_slice_factor`` is not None the rule differs per slice: it holds one factor per
    slice, in the order the slices were given, and must be used instead of ``factor`` (then their median,
    for the log).
    """

    units: str  # "BQML", "CNTS", "GML"
    factor: float
    per_slice_factor: tuple[float, ...] | None
    weight_kg: float | None
    injected_dose_bq: float | None
    half_life_s: float | None
    decay_reference: str | None  # "START", "ADMIN" or None (GML, or CNTS without the tag)
    decay_seconds: float | None  # from injection to the reference time (0 for ADMIN)
    summary: str  # one line for the log and case.json; no dates, names or identifiers


def _label(keyword: str, within: str | None = None) -> str:
    """``"PatientWeight (0010,1030)"``, or with ``within`` the sequence item path before it."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    prefix = f"{within}." if within else ""
    return f"{prefix}{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


_RP_ITEM = f"{_RP_SEQUENCE}[0]"


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """The element's value as stripped text; None when absent or empty (type 2 elements may be empty)."""
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _number(text: str, label: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise MissingSuvTag(label, f"unparseable {text!r}") from None
    if not math.isfinite(number):
        raise MissingSuvTag(label, f"not a finite number ({text!r})")
    return number


def _positive(ds: pydicom.Dataset, keyword: str, within: str | None = None) -> float:
    label = _label(keyword, within)
    text = _text(ds, keyword)
    if text is None:
        raise MissingSuvTag(label, "absent or empty")
    number = _number(text, label)
    if number <= 0:
        raise MissingSuvTag(label, f"zero or negative ({text})")
    return number


def _optional_positive(ds: pydicom.Dataset, keyword: str) -> float | None:
    """A value reported when present but not needed by the rule in use; ignored when unusable."""
    text = _text(ds, keyword)
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number > 0 else None


def _parse(kind: Callable[[str], object], text: str, label: str) -> object:
    try:
        return kind(text)
    except ValueError:
        raise MissingSuvTag(label, f"unparseable {text!r}") from None


def _date(text: str, label: str) -> dt.date:
    value = _parse(DA, text, label)
    assert isinstance(value, dt.date)
    return value


def _time(text: str, label: str) -> dt.time:
    # ACR-NEMA and pre-2003 DICOM wrote times as HH:MM:SS; pydicom 3 rejects the colons.
    value = _parse(TM, text.replace(":", ""), label)
    assert isinstance(value, dt.time)
    return value


def _datetime(text: str, label: str) -> dt.datetime:
    value = _parse(DT, text, label)
    assert isinstance(value, dt.datetime)
    # Every other time in the header is local wall-clock time without an offset; an offset on this one
    # describes that same local time, so it is dropped rather than converted.
    return value.replace(tzinfo=None)


def _date_and_time(ds: pydicom.Dataset, date_keyword: str, time_keyword: str) -> dt.datetime:
    date_text, time_text = _text(ds, date_keyword), _text(ds, time_keyword)
    if date_text is None:
        raise MissingSuvTag(_label(date_keyword), "absent or empty")
    if time_text is None:
        raise MissingSuvTag(_label(time_keyword), "absent or empty")
    return dt.datetime.combine(_date(date_text, _label(date_keyword)), _time(time_text, _label(time_keyword)))


def _acquisition_datetime(ds: pydicom.Dataset) -> dt.datetime | None:
    """The slice's acquisition start, or None when it records none (the tags are type 2: may be empty)."""
    combined = _text(ds, "AcquisitionDateTime")
    if combined is not None:
        return _datetime(combined, _label("AcquisitionDateTime"))
    time_text = _text(ds, "AcquisitionTime")
    if time_text is None:
        return None
    date_keyword = "AcquisitionDate" if _text(ds, "AcquisitionDate") is not None else "SeriesDate"
    return _date_and_time(ds, date_keyword, "AcquisitionTime")


def _private_value(ds: pydicom.Dataset, group: int, creator: str, offset: int) -> str | None:
    """A private element's value as text, found through its creator; None when absent.

    Implicit-VR files or anonymisers can leave the value as raw bytes (VR UN): those are decoded. When the
    group has no creator at all (some anonymisers drop it), the conventional block ``xx10`` is tried.
    """
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        if (group, 0x0010) in ds:  # the usual block belongs to another creator
            return None
        element = ds.get((group, 0x1000 + offset))
    else:
        element = block[offset] if offset in block else None  # noqa: SIM401 (a PrivateBlock has no get)
    if element is None or element.value is None:
        return None
    value = element.value
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def _radiopharmaceutical(ds: pydicom.Dataset) -> pydicom.Dataset:
    sequence = ds.get(_RP_SEQUENCE)
    if not sequence:
        raise MissingSuvTag(_label(_RP_SEQUENCE), "absent or empty")
    return sequence[0]


# Series-level values the factor is built from: they must agree between slices, or the slices do not come from
# one acquisition (a mixed series) and no single rule fits them.
_SERIES_LEVEL: tuple[tuple[str, bool], ...] = (
    ("Units", False),
    ("DecayCorrection", False),
    ("PatientWeight", False),
    ("SeriesDate", False),
    ("SeriesTime", False),
    ("RadionuclideTotalDose", True),
    ("RadionuclideHalfLife", True),
    ("RadiopharmaceuticalStartTime", True),
    ("RadiopharmaceuticalStartDateTime", True),
)


def _check_one_series(slices: Sequence[pydicom.Dataset]) -> None:
    for keyword, in_sequence in _SERIES_LEVEL:
        seen: set[str | None] = set()
        for ds in slices:
            source = ds
            if in_sequence:
                sequence = ds.get(_RP_SEQUENCE)
                source = sequence[0] if sequence else pydicom.Dataset()
            seen.add(_text(source, keyword))
        if len(seen) > 1:
            label = _label(keyword, _RP_ITEM if in_sequence else None)
            shown = ", ".join(sorted(repr(v) for v in seen))
            raise MissingSuvTag(label, f"differs between slices ({shown}): not one acquisition")


def _scan_reference(slices: Sequence[pydicom.Dataset]) -> tuple[dt.datetime, str]:
    """The moment START decay correction refers to, and where it came from (QIBA)."""
    series = _date_and_time(slices[0], "SeriesDate", "SeriesTime")
    acquisitions = [t for t in (_acquisition_datetime(ds) for ds in slices) if t is not None]
    if not acquisitions:
        return series, "series time (no acquisition time recorded)"
    earliest = min(acquisitions)
    if series <= earliest:
        return series, "series time"
    # The series was created after the acquisition began: its time is that of the post-processing.
    ge_scan = _private_value(slices[0], 0x0009, _GE_CREATOR, _GE_SCAN_DATETIME)
    if ge_scan is not None:
        return _datetime(ge_scan, f"GE scan date and time (0009,10{_GE_SCAN_DATETIME:02X})"), "GE private scan time"
    return earliest, "earliest acquisition time (series time is later: post-processed)"


def _injection(item: pydicom.Dataset, reference: dt.datetime) -> tuple[dt.datetime, str]:
    """The injection moment and the label of the tag it came from."""
    combined = _text(item, "RadiopharmaceuticalStartDateTime")
    if combined is not None:
        label = _label("RadiopharmaceuticalStartDateTime", _RP_ITEM)
        return _datetime(combined, label), label
    label = _label("RadiopharmaceuticalStartTime", _RP_ITEM)
    time_text = _text(item, "RadiopharmaceuticalStartTime")
    if time_text is None:
        raise MissingSuvTag(label, "absent or empty (and no RadiopharmaceuticalStartDateTime (0018,1078))")
    injected = dt.datetime.combine(reference.date(), _time(time_text, label))
    if injected > reference:
        # A time of day only: an injection later in the day than the scan was the evening before a scan
        # after midnight. (A genuinely wrong time then shows as an implausibly long decay, refused below.)
        injected -= dt.timedelta(days=1)
    return injected, label


@dataclass(frozen=True)
class _Bqml:
    factor: float  # weight_g / decayed dose: Bq/mL -> SUVbw
    weight_kg: float
    dose_bq: float
    half_life_s: float | None
    reference: str
    decay_seconds: float
    reference_source: str


def _check_corrections(ds: pydicom.Dataset, decay: str) -> None:
    """QIBA computes SUV only for images corrected for attenuation and decay (when the tag says which)."""
    values = ds.get("CorrectedImage")
    if values is None or values == "":
        return
    corrections = {str(v).strip().upper() for v in ([values] if isinstance(values, str) else values)}
    label = _label("CorrectedImage")
    if "ATTN" not in corrections:
        listed = "\\".join(sorted(corrections))
        raise MissingSuvTag(label, f"lacks ATTN ({listed}): not attenuation-corrected")
    if "DECY" not in corrections:
        raise MissingSuvTag(label, f"lacks DECY while DecayCorrection is {decay}")


def _bqml(slices: Sequence[pydicom.Dataset]) -> _Bqml:
    """Bq/mL to SUVbw: body weight over the injected dose decayed to the images' decay-correction reference."""
    first = slices[0]
    weight_kg = _positive(first, "PatientWeight")
    if weight_kg > MAX_WEIGHT_KG:
        raise MissingSuvTag(_label("PatientWeight"), f"implausible {weight_kg:g} kg (grams or pounds entered?)")
    item = _radiopharmaceutical(first)
    dose_bq = _positive(item, "RadionuclideTotalDose", _RP_ITEM)
    if dose_bq < MIN_DOSE_BQ:
        raise MissingSuvTag(_label("RadionuclideTotalDose", _RP_ITEM), f"implausible {dose_bq:g} Bq (MBq entered?)")
    decay = _text(first, "DecayCorrection")
    if decay is None:
        raise MissingSuvTag(_label("DecayCorrection"), "absent or empty")
    decay = decay.upper()
    if decay == "ADMIN":
        _check_corrections(first, decay)
        return _Bqml(weight_kg * 1000.0 / dose_bq, weight_kg, dose_bq, _optional_positive(item, "RadionuclideHalfLife"),
                     "ADMIN", 0.0, "administration")
    if decay != "START":
        reason = ("NONE: the images are not decay-corrected, and slices' own bed times are not recorded alike by "
                  "vendors" if decay == "NONE" else f"unsupported value {decay!r}")
        raise MissingSuvTag(_label("DecayCorrection"), reason)
    _check_corrections(first, decay)
    half_life_s = _positive(item, "RadionuclideHalfLife", _RP_ITEM)
    reference, source = _scan_reference(slices)
    injected, injection_label = _injection(item, reference)
    decay_seconds = (reference - injected).total_seconds()
    if decay_seconds < 0:
        raise MissingSuvTag(injection_label, f"after the scan reference ({source}) by {-decay_seconds:.0f} s")
    if decay_seconds > MAX_DECAY_HALF_LIVES * half_life_s:
        half_lives = decay_seconds / half_life_s
        raise MissingSuvTag(
            injection_label, f"implausible: {decay_seconds / 3600:.1f} h ({half_lives:.1f} half-lives) before the scan"
        )
    decayed_dose = dose_bq * 2.0 ** (-decay_seconds / half_life_s)
    return _Bqml(weight_kg * 1000.0 / decayed_dose, weight_kg, dose_bq, half_life_s, "START", decay_seconds, source)


def _per_slice(values: Sequence[float]) -> tuple[float, tuple[float, ...] | None]:
    """The factor for the log (the median) and the per-slice factors, None when they are all equal."""
    if len(set(values)) == 1:
        return values[0], None
    return float(statistics.median(values)), tuple(values)


def _philips_factors(slices: Sequence[pydicom.Dataset], offset: int) -> list[float] | None:
    """Every slice's Philips private factor at ``offset``, or None unless all slices hold a positive one."""
    factors: list[float] = []
    for ds in slices:
        text = _private_value(ds, 0x7053, _PHILIPS_CREATOR, offset)
        if text is None:
            return None
        value = _number(text, f"Philips private (7053,10{offset:02X})")
        if value <= 0:
            return None
        factors.append(value)
    return factors


def _bqml_summary(b: _Bqml) -> str:
    if b.reference == "ADMIN":
        timing = "images decay-corrected to administration (dose not decayed)"
    else:
        timing = (f"dose decayed over {b.decay_seconds / 60:.1f} min to the {b.reference_source}, "
                  f"half-life {b.half_life_s / 60:.1f} min" if b.half_life_s else "")
    return f"weight {b.weight_kg:g} kg, injected {b.dose_bq / 1e6:.1f} MBq, {timing}"


def suv_from_header(slices: Sequence[pydicom.Dataset]) -> SuvFromHeader:
    """The SUVbw factor of a PET series from its header tags; raises ``MissingSuvTag`` when they do not suffice.

    Args:
        slices: the series' datasets (pixel data not needed), in the order ``per_slice_factor`` should follow.
    """
    if not slices:
        raise ValueError("suv_from_header needs at least one slice")
    first = slices[0]
    units = _text(first, "Units")
    if units is None:
        raise MissingSuvTag(_label("Units"), "absent or empty")
    units = units.upper()
    if units not in SUPPORTED_UNITS:
        raise MissingSuvTag(_label("Units"), f"unsupported Units {units!r} (BQML, CNTS or GML are converted)")
    _check_one_series(slices)

    if units == "GML":
        return SuvFromHeader(units, 1.0, None, None, None, None, None, None,
                             "SUVbw from DICOM header: Units GML, already SUVbw (factor 1)")

    if units == "CNTS":
        suv_scale = _philips_factors(slices, _PHILIPS_SUV_SCALE)
        if suv_scale is not None:
            factor, per_slice = _per_slice(suv_scale)
            decay = _text(first, "DecayCorrection")
            return SuvFromHeader(units, factor, per_slice, None, None, None, decay.upper() if decay else None, None,
                                 f"SUVbw from DICOM header: Units CNTS, Philips SUV Scale Factor (7053,1000) "
                                 f"{factor:.4g}{' (median; differs per slice)' if per_slice else ''}")
        activity_scale = _philips_factors(slices, _PHILIPS_ACTIVITY_SCALE)
        if activity_scale is None:
            raise MissingSuvTag("Philips SUV Scale Factor (7053,1000)",
                                "Units CNTS without a positive SUV Scale Factor (7053,1000) or Activity "
                                "Concentration Scale Factor (7053,1009) in every slice")
        b = _bqml(slices)
        factor, per_slice = _per_slice([scale * b.factor for scale in activity_scale])
        return SuvFromHeader(units, factor, per_slice, b.weight_kg, b.dose_bq, b.half_life_s, b.reference,
                             b.decay_seconds,
                             f"SUVbw from DICOM header: Units CNTS, Philips Activity Concentration Scale Factor "
                             f"(7053,1009) to Bq/mL, {_bqml_summary(b)}: factor {factor:.4g}"
                             f"{' (median; differs per slice)' if per_slice else ''}")

    b = _bqml(slices)
    return SuvFromHeader(units, b.factor, None, b.weight_kg, b.dose_bq, b.half_life_s, b.reference, b.decay_seconds,
                         f"SUVbw from DICOM header: Units BQML, DecayCorrection {b.reference}, {_bqml_summary(b)}: "
                         f"factor {b.factor:.4g}")
