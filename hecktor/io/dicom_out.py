"""DICOM outputs for planning systems: GTVp and GTVn as a DICOM-SEG and as an RTSTRUCT on the case's CT series.

Asked for with ``--dicom-out`` (``run`` and ``batch``), written beside the challenge outputs and published in the
same all-or-nothing commit (:mod:`hecktor.io.write`), under :data:`~hecktor.io.write.DICOM_DIR`:

- ``dicom/seg.dcm``: a DICOM Segmentation (highdicom), type BINARY, segment 1 "GTVp" (DCM 130052 GTV Primary) and
  segment 2 "GTVn" (DCM 130051 GTV Nodal), category RT Target. Both segments are always described, so segment
  number = label value; a class without voxels has no frames, and a case without any lesion stores its empty
  frames (a SEG must hold at least one frame).
- ``dicom/rtstruct.dcm``: an RT Structure Set (pydicom), ROI 1 "GTVp" and ROI 2 "GTVn", interpreted type GTV,
  generated AUTOMATIC, one CLOSED_PLANAR contour per connected region and hole on each CT slice
  (:mod:`hecktor.io.contours`: the mask's 0.5 iso-line, so centre-in-polygon rasterising gives the voxels back).
  A class without voxels is still listed, without contours: the planning system shows it as empty.

Both carry the CT's patient and study, reference its Frame of Reference UID, its series and every CT instance
(SOP Class and Instance UID), so a planning system attaches them to those images.

**The CT they reference.** When the case was read from a DICOM CT series (:attr:`Case.dicom_series`) whose
slices are exactly the label image's grid, that series is referenced and nothing else is written. Otherwise the CT
is written first as a DICOM CT series, ``dicom/ct/0001.dcm`` ... (one file per slice, in the label image's slice
order), and both files reference it:

- NIfTI/MHA input: a new patient/study/series/frame of reference, the case ID as Patient ID and Patient's Name.
  Its UIDs are derived from the CT's voxels and geometry, so the same CT gives the same UIDs on every run and
  a planning system that already holds it attaches a rerun's contours to the same images. Pixels are stored
  as int16 HU (rounded, clipped to the int16 range); Patient Position is unknown and left empty.
- DICOM input whose grid is not the series' own (a reader that had to resample it): the written series joins
  the original patient, study and frame of reference, so it stays registered with the original images.

pydicom does the encoding; nothing here writes DICOM bytes by hand.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Case, DicomSeriesRef, InputError
from hecktor.io.contours import mask_contours
from hecktor.io.qc import GTVN_RGB, GTVP_RGB
from hecktor.io.write import DICOM_DIR, StagedOutputs

__all__ = [
    "CT_SERIES_DIR",
    "RTSTRUCT_PATH",
    "SEG_PATH",
    "DicomOutputPlan",
    "SegmentationSource",
    "ct_series_paths",
    "plan_dicom_outputs",
]

log = logging.getLogger(__name__)

SEG_PATH = DICOM_DIR / "seg.dcm"
RTSTRUCT_PATH = DICOM_DIR / "rtstruct.dcm"
CT_SERIES_DIR = DICOM_DIR / "ct"

MANUFACTURER = "hecktor"
# Series numbers of what is written, high so that they sort after a scanner's own series.
CT_SERIES_NUMBER = 900
SEG_SERIES_NUMBER = 901
RTSTRUCT_SERIES_NUMBER = 902
# Engines that are rules, not networks (the SEG's algorithm family says which; the README's engine list).
RULE_ENGINES = frozenset({"pet-threshold"})
# Retired "Detached Study Management" SOP class: what RT Referenced Study Sequence items carry in practice
# (planning systems, and the real RTSTRUCT of the sarcoma test case), as the study has no SOP instance of its own.
_STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

# A referenced slice must lie within this fraction of the smallest voxel spacing of where the label image puts it.
_POSITION_TOLERANCE = 0.1
_DIRECTION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-3  # relative

_PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                   "AccessionNumber")
_STUDY_OPTIONAL_KEYWORDS = ("StudyDescription", "IssuerOfPatientID", "PatientAge", "PatientWeight")


@dataclass(frozen=True)
class _Class:
    label: int
    name: str
    property_type: Code
    rgb: tuple[int, int, int]


_CLASSES = (
    _Class(LABEL_GTVP, "GTVp", codes.DCM.GTVPrimary, GTVP_RGB),
    _Class(LABEL_GTVN, "GTVn", codes.DCM.GTVNodal, GTVN_RGB),
)


@dataclass(frozen=True)
class SegmentationSource:
    """What produced the labels: the SEG's algorithm identification and both files' descriptions."""

    engine: str  # the manifest's segmentation engine ("ensemble", "pet-threshold")
    version: str  # the product version
    trained_on_real_data: bool

    @property
    def description(self) -> str:
        """Says in the series description, which a planner sees, when the labels are not from a trained network."""
        if self.engine in RULE_ENGINES:
            return f"hecktor {self.engine} rule, NOT a trained model"
        if not self.trained_on_real_data:
            return f"hecktor {self.engine}, NOT trained on real data"
        return f"hecktor {self.engine} {self.version}"


def ct_series_paths(slice_count: int) -> tuple[Path, ...]:
    """``dicom/ct/0001.dcm`` ...: one file per slice, numbered from the label image's first slice (index z 0)."""
    width = max(4, len(str(slice_count)))
    return tuple(CT_SERIES_DIR / f"{index + 1:0{width}d}.dcm" for index in range(slice_count))


# --------------------------------------------------------------------------- geometry


def _slice_geometry(grid: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slice positions (n, 3), the row and column direction cosines, all in LPS millimetres."""
    direction = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(grid.GetSpacing(), dtype=np.float64)
    origin = np.asarray(grid.GetOrigin(), dtype=np.float64)
    slices = np.arange(grid.GetSize()[2], dtype=np.float64)
    positions = origin + np.outer(slices, direction[:, 2] * spacing[2])
    return positions, direction[:, 0], direction[:, 1]


def _grid_mismatch(headers: Sequence[Dataset], grid: sitk.Image) -> str | None:
    """Why the CT instances ``headers`` (index z order) are not exactly the slices of ``grid``; None when they are."""
    size = grid.GetSize()
    if len(headers) != size[2]:
        return f"{len(headers)} instances for {size[2]} slices"
    spacing = grid.GetSpacing()
    positions, row_cosine, column_cosine = _slice_geometry(grid)
    tolerance = _POSITION_TOLERANCE * min(spacing)
    for index, header in enumerate(headers):
        if (int(header.Rows), int(header.Columns)) != (size[1], size[0]):
            return f"instance {index + 1} is {header.Rows} x {header.Columns} pixels, the CT {size[1]} x {size[0]}"
        orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        if not (np.allclose(orientation[:3], row_cosine, atol=_DIRECTION_TOLERANCE)
                and np.allclose(orientation[3:], column_cosine, atol=_DIRECTION_TOLERANCE)):
            return f"instance {index + 1} has another orientation ({list(orientation)})"
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
        if not np.allclose((column_spacing, row_spacing), spacing[:2], rtol=_SPACING_TOLERANCE):
            return f"instance {index + 1} has another pixel spacing ({row_spacing}, {column_spacing})"
        offset = float(np.linalg.norm(np.asarray(header.ImagePositionPatient, dtype=np.float64) - positions[index]))
        if offset > tolerance:
            return f"instance {index + 1} lies {offset:.3f} mm from slice {index} of the CT grid"
    return None


def _read_series_headers(series: DicomSeriesRef) -> list[Dataset]:
    """The series' instance headers (no pixel data), in the series' slice order; checked against its UIDs."""
    headers = []
    for path, sop_instance_uid in zip(series.files, series.sop_instance_uids, strict=True):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"{path}: cannot read the CT instance the DICOM outputs reference ({exc})") from exc
        if header.get("SOPInstanceUID") != sop_instance_uid:
            raise InputError(f"{path}: no longer holds the CT instance {sop_instance_uid} read with the case")
        headers.append(header)
    return headers


# --------------------------------------------------------------------------- the CT as a DICOM series


def _copy(source: Dataset, target: Dataset, keywords: Sequence[str], required: bool) -> None:
    """Copy ``keywords`` from ``source``; a required (Type 2) attribute the source lacks is written empty."""
    for keyword in keywords:
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
        elif required:
            setattr(target, keyword, "")
    _blank_invalid_values(target, keywords)


def _blank_invalid_values(dataset: Dataset, keywords: Sequence[str]) -> None:
    """Empty the copied patient/study attributes whose values break their VR's rules.

    The source series may hold such a value (STS_001's 17-character Study ID in a 16-character SH); carried
    over it would make our files fail validation, while planning systems attach contours by UID, not by
    these values. Every keyword here is Type 2 or optional, so empty means "unknown".
    """
    from pydicom import config
    from pydicom.valuerep import validate_value

    for keyword in keywords:
        if keyword not in dataset:
            continue
        element = dataset[keyword]
        try:
            validate_value(element.VR, element.value, config.RAISE)
        except ValueError as exc:
            log.warning("the source header's %s is invalid (%s): written empty in the DICOM outputs", keyword, exc)
            element.value = ""


def _ct_fingerprint(ct: sitk.Image) -> str:
    """sha256 of the CT's voxels and geometry: the seed of the converted series' UIDs."""
    digest = hashlib.sha256()
    digest.update(repr((ct.GetSize(), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())).encode())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(ct)).tobytes())
    return digest.hexdigest()


def _converted_ct_headers(ct: sitk.Image, case_id: str, context: Dataset | None) -> list[Dataset]:
    """CT Image headers (no pixel data yet) for writing ``ct`` as a DICOM series, one per slice in index z order.

    ``context``: a header of the case's own DICOM series, whose patient, study and frame of reference the written
    series joins; ``None`` (NIfTI/MHA input) makes a new patient and study named after ``case_id``.
    """
    positions, row_cosine, column_cosine = _slice_geometry(ct)
    if abs(float(row_cosine @ column_cosine)) > _DIRECTION_TOLERANCE:
        raise InputError(f"case {case_id}: the CT's x and y axes are not perpendicular (a sheared grid); DICOM "
                         "images cannot represent it, so no DICOM outputs can be written")
    seed = _ct_fingerprint(ct)

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["hecktor converted CT", case_id, seed, *map(str, parts)])

    study = Dataset()
    if context is None:
        study.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a case ID taken from a folder name may be any text
        study.PatientName = case_id[:64]
        study.PatientID = case_id[:64]
        study.PatientBirthDate = ""
        study.PatientSex = ""
        study.StudyInstanceUID = uid("study")
        study.StudyDate = study.StudyTime = study.ReferringPhysicianName = study.AccessionNumber = ""
        study.StudyID = ""
        frame_of_reference_uid = uid("frame of reference")
    else:
        _copy(context, study, ("SpecificCharacterSet",), required=False)
        _copy(context, study, (*_PATIENT_KEYWORDS, *_STUDY_KEYWORDS), required=True)
        frame_of_reference_uid = context.FrameOfReferenceUID
    series_instance_uid = uid("series", frame_of_reference_uid)
    size, spacing = ct.GetSize(), ct.GetSpacing()
    headers = []
    for index in range(size[2]):
        ds = Dataset()
        ds.update(study)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid("instance", index, series_instance_uid)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_instance_uid
        ds.SeriesNumber = CT_SERIES_NUMBER
        ds.SeriesDescription = "CT converted by hecktor"
        ds.PatientPosition = ""  # unknown: NIfTI and MHA do not carry it
        ds.Laterality = ""  # Type 2C (paired body parts); the body part is unknown
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = ""  # the scanner is unknown; the conversion is told by Image Type and the description
        ds.InstanceNumber = index + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = f"converted by hecktor from the CT of case {case_id}"[:1024]
        ds.ImagePositionPatient = [_ds(v) for v in positions[index]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (between rows), column spacing
        ds.SliceThickness = _ds(spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = size[1], size[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1  # signed
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        headers.append(ds)
    return headers


def _ct_slice_bytes(header: Dataset, ct: sitk.Image, index: int) -> bytes:
    """One converted CT instance: ``header`` with slice ``index``'s HU as int16 pixel data, encoded by pydicom."""
    hu = sitk.GetArrayViewFromImage(ct)[index]  # (rows, columns) = (y, x)
    pixels = np.clip(np.rint(hu), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype("<i2")
    ds = Dataset()
    ds.update(header)
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "SS"
    return _encoded(ds)


# --------------------------------------------------------------------------- encoding helpers


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for a coordinate in millimetres or a direction cosine."""
    text = f"{round(float(value), 6) + 0.0:.10g}"  # + 0.0 turns -0.0 into 0.0
    return text if len(text) <= 16 else pydicom.valuerep.format_number_as_ds(float(value))


def _encoded(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, file meta, Explicit VR Little Endian unless it has its own)."""
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


# --------------------------------------------------------------------------- DICOM-SEG


def _segmentation(headers: Sequence[Dataset], labels: np.ndarray, source: SegmentationSource) -> Dataset:
    family = (codes.cid7162.NeighborhoodAnalysis if source.engine in RULE_ENGINES  # thresholds + region growing
              else codes.cid7162.ArtificialIntelligence)
    algorithm = hd.AlgorithmIdentificationSequence(name=f"hecktor {source.engine}"[:64], family=family,
                                                   version=source.version)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=cls.label, segment_label=cls.name, segmented_property_category=codes.DCM.RTTarget,
            segmented_property_type=cls.property_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*cls.rgb))
        for cls in _CLASSES
    ]
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=labels,  # (slices, rows, columns), values = segment numbers
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"hecktor {source.engine}"[:64],
        software_versions=source.version,
        device_serial_number="none (software)",
        content_label="GTV",
        content_description=source.description[:64],
        series_description=source.description[:64],
    )
    # highdicom copies the patient and study attributes from the source images as they are.
    _blank_invalid_values(seg, (*_PATIENT_KEYWORDS, *_STUDY_KEYWORDS, *_STUDY_OPTIONAL_KEYWORDS))
    return seg


# --------------------------------------------------------------------------- RTSTRUCT


def _contour_image(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _contours_of(labels: np.ndarray, label: int, headers: Sequence[Dataset]) -> list[Dataset]:
    """The CLOSED_PLANAR contour items of one class, each on the slice (and referencing the instance) it outlines."""
    where = np.nonzero(labels == label)
    if not where[0].size:
        return []
    # Only the class's bounding box is traced (a 512 x 512 slice holds a lesion of a few dozen pixels).
    low = [int(axis.min()) for axis in where]
    high = [int(axis.max()) + 1 for axis in where]
    box = labels[low[0]:high[0], low[1]:high[1], low[2]:high[2]] == label
    items = []
    for offset, mask in enumerate(box):
        index = low[0] + offset
        header = headers[index]
        position = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
        for polygon in mask_contours(mask):
            columns, rows = polygon[:, 0] + low[2], polygon[:, 1] + low[1]
            # DICOM's pixel-to-patient mapping (PS3.3 C.7.6.2.1.1): position + column * column_spacing * row
            # cosine + row * row_spacing * column cosine; so each contour is exactly in its slice's plane.
            points = (position + np.outer(columns * column_spacing, orientation[:3])
                      + np.outer(rows * row_spacing, orientation[3:]))
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_contour_image(header)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            item.ContourData = [_ds(v) for v in points.ravel()]
            items.append(item)
    return items


def _structure_set(headers: Sequence[Dataset], labels: np.ndarray, source: SegmentationSource) -> Dataset:
    first = headers[0]
    date, time = _now()
    ds = Dataset()
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    _copy(first, ds, ("SpecificCharacterSet",), required=False)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _copy(first, ds, (*_PATIENT_KEYWORDS, *_STUDY_KEYWORDS), required=True)
    _copy(first, ds, _STUDY_OPTIONAL_KEYWORDS, required=False)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    ds.SeriesDescription = source.description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"hecktor {source.engine}"[:64]
    ds.SoftwareVersions = source.version
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "HECKTOR"
    ds.StructureSetName = "GTVp GTVn"
    ds.StructureSetDescription = f"GTVp and GTVn segmented automatically ({source.description})"
    ds.StructureSetDate, ds.StructureSetTime = date, time

    # The Frame of Reference module (the CT's): a planning system matches the structure set to its images by it.
    frame_of_reference_uid = first.FrameOfReferenceUID
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_contour_image(header) for header in headers])
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_REFERENCE_SOP_CLASS
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    rois, roi_contours, observations = [], [], []
    for cls in _CLASSES:
        roi = Dataset()
        roi.ROINumber = cls.label
        roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        roi.ROIName = cls.name
        roi.ROIDescription = f"{cls.property_type.meaning}, {source.description}"[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = source.description[:64]
        rois.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = cls.label
        roi_contour.ROIDisplayColor = list(cls.rgb)
        contours = _contours_of(labels, cls.label, headers)
        if contours:  # Type 3: an ROI without voxels has no Contour Sequence at all
            roi_contour.ContourSequence = DicomSequence(contours)
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = cls.label
        observation.ReferencedROINumber = cls.label
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    return ds


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DicomOutputPlan:
    """A case's DICOM files, decided before any is encoded: :attr:`paths` can be declared to the staged set first.

    ``headers``: the CT instances SEG and RTSTRUCT reference, in the label image's slice order (z). ``ct_paths``:
    where the CT series is written (empty when the case's own DICOM series is referenced).
    """

    labels: sitk.Image
    ct: sitk.Image
    headers: tuple[Dataset, ...]
    ct_paths: tuple[Path, ...]
    source: SegmentationSource

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file, relative to the case's output folder: the CT series (if written), the SEG, the RTSTRUCT."""
        return (*self.ct_paths, SEG_PATH, RTSTRUCT_PATH)

    @property
    def references_input_series(self) -> bool:
        return not self.ct_paths

    def encoded(self) -> Iterator[tuple[Path, bytes]]:
        """Each file's relative path and bytes, one at a time (a CT series is hundreds of files)."""
        for index, (path, header) in enumerate(zip(self.ct_paths, self.headers, strict=False)):
            yield path, _ct_slice_bytes(header, self.ct, index)
        labels = np.ascontiguousarray(sitk.GetArrayFromImage(sitk.Cast(self.labels, sitk.sitkUInt8)))
        yield SEG_PATH, _encoded(_segmentation(self.headers, labels, self.source))
        yield RTSTRUCT_PATH, _encoded(_structure_set(self.headers, labels, self.source))

    def stage(self, outputs: StagedOutputs) -> None:
        """Encode every file into ``outputs`` (where :attr:`paths` must already be declared targets)."""
        for path, data in self.encoded():
            outputs.stage_bytes(path, data)


def _ct_series_of(case: Case) -> DicomSeriesRef | None:
    return next((series for series in case.dicom_series if series.role.upper() == "CT"), None)


def plan_dicom_outputs(case: Case, labels: sitk.Image, source: SegmentationSource) -> DicomOutputPlan:
    """Decide which CT the DICOM outputs of ``case`` reference (its own series, or one written beside them).

    ``labels`` must be on the CT's grid (the pipeline's label image always is). Raises
    :class:`~hecktor.core.types.InputError` when the case's CT instances can no longer be read.
    """
    if labels.GetSize() != case.ct.GetSize():
        raise ValueError(f"the label image ({labels.GetSize()}) is not on the CT grid ({case.ct.GetSize()})")
    series = _ct_series_of(case)
    context = None
    if series is not None:
        headers = _read_series_headers(series)
        mismatch = _grid_mismatch(headers, labels)
        if mismatch is None:
            log.info("DICOM outputs reference the case's CT series %s (%d instances)", series.series_instance_uid,
                     len(headers))
            return DicomOutputPlan(labels, case.ct, tuple(headers), (), source)
        log.warning("the CT grid of case %s is not its DICOM series' own (%s): the DICOM outputs reference a CT "
                    "series written beside them, in the same study and frame of reference", case.case_id, mismatch)
        context = headers[0]
    headers = _converted_ct_headers(case.ct, case.case_id, context)
    if series is None:
        log.info("case %s was not read from DICOM: its CT is written as a DICOM series (%s/, %d files) for the DICOM "
                 "outputs to reference", case.case_id, CT_SERIES_DIR.as_posix(), len(headers))
    return DicomOutputPlan(labels, case.ct, tuple(headers), ct_series_paths(len(headers)), source)
