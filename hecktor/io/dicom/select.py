"""Choose the CT and the attenuation-corrected PET of a study, and say why for every series found.

A PET/CT study usually holds more than the two volumes a case needs: localisers (scouts), a PET without
attenuation correction (NAC), MIPs, a diagnostic CT, RT structures, reports. The rules, in order:

1. **What can be a volume.** Modality ``CT`` with SOP class CT Image Storage, or ``PT`` with PET Image Storage
   (enhanced multi-frame objects, secondary captures and every other modality are listed and left out). Not a
   localiser or a projection (``ImageType`` holding ``LOCALIZER``, ``MIP`` or ``PROJECTION IMAGE``), and at least
   :data:`MIN_VOLUME_SLICES` instances (fewer is a scout, a key image or a single slice).
2. **The PET must be attenuation-corrected.** ``CorrectedImage (0028,0051)`` must hold ``ATTN`` when present;
   when it is absent, a PET whose ``ImageType`` holds ``NAC`` or whose description reads like one (``NAC``,
   ``non-AC``, ``noAC``, ``uncorrected``, ``no attn``) is left out.
3. **One frame of reference.** When some CT and some PET share a ``FrameOfReferenceUID`` (a PET/CT
   acquisition), only such pairs are considered: a CT of another session or scanner is left out. When none
   does, the chosen pair is a recoverable problem (``dicom-frame-of-reference``): their coordinates are taken as
   one frame, as the NIfTI layouts do.
4. **The most slices.** The CT with the most instances is taken, then the PET with the most among those sharing
   its frame of reference. Equal counts are **ambiguous**: the lowest series number is taken (then the UID), and
   the case carries a recoverable problem ``dicom-series-ambiguous`` listing the series found and the one taken
   (``--strict`` refuses).

No CT or no PET left after rules 1-2 is a refusal listing every series and why it was left out.
:func:`choose_series` is a pure function of the scanned headers; reading pixels comes later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hecktor.core.types import InputError
from hecktor.io.dicom.series import DicomSeries

__all__ = ["MIN_VOLUME_SLICES", "SeriesChoice", "SeriesVerdict", "choose_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
_STORAGE_OF_MODALITY = {"CT": CT_IMAGE_STORAGE, "PT": PET_IMAGE_STORAGE}
# A CT or PET volume of any field of view has dozens of slices; localisers have 1-3, key images a few.
MIN_VOLUME_SLICES = 10
_NOT_A_VOLUME_TYPES = ("LOCALIZER", "MIP", "PROJECTION IMAGE")
_NAC_DESCRIPTION = re.compile(r"\bnac\b|\bnon[-_ ]?ac\b|\bnoac\b|uncorrected|\bno[-_ ]?attn", re.IGNORECASE)


@dataclass(frozen=True)
class SeriesVerdict:
    """One series of the study: taken as ``taken_as`` ("CT" or "PET") or left out (None), and why."""

    series: DicomSeries
    taken_as: str | None
    reason: str


@dataclass(frozen=True)
class SeriesChoice:
    ct: DicomSeries
    pet: DicomSeries
    verdicts: tuple[SeriesVerdict, ...]  # every series of the study, in the study's order
    ambiguity: str | None  # what the rules could not decide (None: they did)
    frame_mismatch: str | None  # the chosen CT and PET share no frame of reference (None: they do)

    def table(self) -> str:
        """One line per series: taken as CT/PET or not, and why (no UIDs, no patient data)."""
        return _table_of(self.verdicts)


def _table_of(verdicts: Sequence[SeriesVerdict]) -> str:
    return "\n".join(f"  {'taken as ' + v.taken_as if v.taken_as else 'not taken':<12} {v.series.label()}: "
                     f"{v.reason}" for v in verdicts)


def _not_a_volume(series: DicomSeries) -> str | None:
    """Why ``series`` cannot be the CT or PET volume (rule 1), or None."""
    expected = _STORAGE_OF_MODALITY.get(series.modality)
    if expected is None:
        return f"modality {series.modality or '(none)'} is neither CT nor PT"
    if series.sop_class_uid != expected or series.max_frames > 1:
        return (f"SOP class {series.sop_class_uid or '(none)'} with {series.max_frames} frame(s): only single-frame "
                f"{'CT' if series.modality == 'CT' else 'PET'} Image Storage is read (enhanced multi-frame objects "
                f"and secondary captures are not)")
    kinds = [t for t in _NOT_A_VOLUME_TYPES if t in series.image_type]
    if kinds:
        return f"a localiser or projection (ImageType {'/'.join(series.image_type)})"
    if series.instance_count < MIN_VOLUME_SLICES:
        return f"{series.instance_count} slice(s): fewer than {MIN_VOLUME_SLICES}, not a volume (a localiser?)"
    return None


def _not_attenuation_corrected(series: DicomSeries) -> str | None:
    """Why a PET is not attenuation-corrected (rule 2), or None."""
    if series.corrected_image:
        if "ATTN" not in series.corrected_image:
            return f"not attenuation-corrected (CorrectedImage {'/'.join(series.corrected_image)} has no ATTN)"
        return None
    if "NAC" in series.image_type:
        return f"not attenuation-corrected (ImageType {'/'.join(series.image_type)})"
    if _NAC_DESCRIPTION.search(series.description):
        return f"not attenuation-corrected (no CorrectedImage; the description {series.description!r} says so)"
    return None


def _rank(series: DicomSeries) -> tuple[int, int, str]:
    """Sort key: most slices first, then the lowest series number, then the UID (rule 4)."""
    number = series.series_number if series.series_number is not None else 1 << 30
    return (-series.instance_count, number, series.series_instance_uid)


def _best(candidates: Sequence[DicomSeries], role: str) -> tuple[DicomSeries, list[DicomSeries], str | None]:
    """The candidate with the most slices, the ties, and the ambiguity in words (None without ties)."""
    ordered = sorted(candidates, key=_rank)
    chosen = ordered[0]
    ties = [s for s in ordered[1:] if s.instance_count == chosen.instance_count]
    if not ties:
        return chosen, ties, None
    names = "; ".join(s.label() for s in (chosen, *ties))
    return chosen, ties, (f"{len(ties) + 1} {role} series qualify with {chosen.instance_count} slices each ({names}); "
                          f"took {chosen.label()}, the lowest series number")


def choose_series(series: Sequence[DicomSeries], where: str = "study") -> SeriesChoice:
    """Apply the module's rules to a study's series; :class:`InputError` (naming ``where``) without a CT or PET."""
    reasons: dict[str, str] = {}
    cts: list[DicomSeries] = []
    pets: list[DicomSeries] = []
    for s in series:
        reason = _not_a_volume(s) or (_not_attenuation_corrected(s) if s.modality == "PT" else None)
        if reason is not None:
            reasons[s.series_instance_uid] = reason
        else:
            (cts if s.modality == "CT" else pets).append(s)
    if not cts or not pets:
        missing = " and ".join(role for role, found in (("CT", cts), ("attenuation-corrected PET", pets))
                               if not found)
        table = _table_of([SeriesVerdict(s, None, reasons.get(s.series_instance_uid, "candidate")) for s in series])
        raise InputError(f"{where}: no {missing} series found among {len(series)} series:\n{table}")

    shared_frames = {c.frame_of_reference_uid for c in cts} & {p.frame_of_reference_uid for p in pets} - {""}
    if shared_frames:
        for s in [*cts, *pets]:
            if s.frame_of_reference_uid not in shared_frames:
                other = "PET" if s.modality == "CT" else "CT"
                reasons[s.series_instance_uid] = f"no {other} shares its frame of reference (others do)"
        cts = [c for c in cts if c.frame_of_reference_uid in shared_frames]
        pets = [p for p in pets if p.frame_of_reference_uid in shared_frames]

    ct, ct_ties, ct_ambiguity = _best(cts, "CT")
    if shared_frames:
        for p in pets:
            if p.frame_of_reference_uid != ct.frame_of_reference_uid:
                reasons[p.series_instance_uid] = "frame of reference differs from the chosen CT's"
        pets = [p for p in pets if p.frame_of_reference_uid == ct.frame_of_reference_uid]
    pet, pet_ties, pet_ambiguity = _best(pets, "PET")

    for role, chosen, candidates, ties in (("CT", ct, cts, ct_ties), ("PET", pet, pets, pet_ties)):
        for s in candidates:
            if s is chosen:
                continue
            reasons[s.series_instance_uid] = (
                f"as many slices as the chosen {role} ({s.instance_count}): ambiguous" if s in ties
                else f"fewer slices ({s.instance_count}) than the chosen {role} ({chosen.instance_count})")
    frame = "shares its frame of reference with the chosen " if shared_frames else ""
    taken = {
        ct.series_instance_uid: ("CT", f"{frame + 'PET, ' if frame else ''}the most slices ({ct.instance_count})"
                                 f"{' (tied)' if ct_ties else ''}"),
        pet.series_instance_uid: ("PET", f"attenuation-corrected, {frame + 'CT, ' if frame else ''}the most slices "
                                  f"({pet.instance_count}){' (tied)' if pet_ties else ''}"),
    }
    verdicts = tuple(
        SeriesVerdict(s, *taken[s.series_instance_uid]) if s.series_instance_uid in taken
        else SeriesVerdict(s, None, reasons.get(s.series_instance_uid, "not considered"))
        for s in series
    )
    ambiguity = "; ".join(a for a in (ct_ambiguity, pet_ambiguity) if a) or None
    mismatch = None if shared_frames else (
        f"the chosen CT and PET do not share a FrameOfReferenceUID (0020,0052) "
        f"({'missing' if not ct.frame_of_reference_uid or not pet.frame_of_reference_uid else 'different'})")
    return SeriesChoice(ct, pet, verdicts, ambiguity, mismatch)
