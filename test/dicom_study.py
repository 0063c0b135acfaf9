"""Build DICOM studies for the tests with pydicom: from the real STS_001 DICOM files, or from any SimpleITK image.

Nothing here is product code: the tests check the product's DICOM reader against what these writers put in.

- :func:`copy_series` rewrites real instances (new series/instance UIDs, any edit per slice) under random,
  nested file names, so that series mix in folders as on a PACS export;
- :func:`write_image_series` writes a volume as a CT (HU) or PET (SUV stored as Bq/mL with the tags SUVbw needs,
  per-slice rescale slopes as GE writes them) Image Storage series.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
# The SUV tags written by write_image_series: 70 kg, 370 MBq of 18F injected 60 min before the series start.
WEIGHT_KG = 70.0
DOSE_BQ = 3.7e8
HALF_LIFE_S = 6588.0
UPTAKE_S = 3600.0
SUV_FACTOR = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-UPTAKE_S / HALF_LIFE_S))  # Bq/mL -> SUVbw

Edit = Callable[[Dataset, int], None]  # changes one slice's dataset (its index in the sorted series)


def random_path(root: Path, rng: random.Random) -> Path:
    """A new file path 1-3 folders deep under ``root`` with a random name and no extension."""
    depth = rng.randint(1, 3)
    parts = [f"{rng.getrandbits(24):06x}" for _ in range(depth)]
    path = root.joinpath(*parts[:-1], f"IM{rng.getrandbits(40):010x}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sorted_by_position(files: Sequence[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def copy_series(files: Sequence[Path], root: Path, rng: random.Random, *, edit: Edit | None = None,
                series_uid: str | None = None, new_instances: bool = True) -> list[Path]:
    """Rewrite ``files`` (sorted along z first) as one series under ``root`` with random names.

    ``series_uid``: the new SeriesInstanceUID (default: a new one); ``edit(ds, index)`` changes each slice.
    """
    uid = series_uid or generate_uid()
    written = []
    for index, source in enumerate(sorted_by_position(files)):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = uid
        if new_instances:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if edit is not None:
            edit(ds, index)
        path = random_path(root, rng)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _file_dataset(sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def _quantised(values: np.ndarray, integral: bool) -> tuple[np.ndarray, float, float]:
    """int16 stored values and (slope, intercept) whose modality LUT gives ``values`` back (exactly for integral
    values that fit int16, else to 1/32767 of the slice's peak)."""
    if integral and values.min() >= -32768 and values.max() <= 32767 and np.all(values == np.rint(values)):
        return values.astype(np.int16), 1.0, 0.0
    peak = float(np.abs(values).max()) or 1.0
    slope = peak / 32767.0
    return np.rint(values / slope).astype(np.int16), slope, 0.0


def write_image_series(image: sitk.Image, root: Path, rng: random.Random, *, modality: str, patient_id: str,
                       study_uid: str, frame_uid: str, series_number: int, description: str,
                       series_uid: str | None = None, image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                       corrected_image: Sequence[str] | None = ("DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"),
                       edit: Edit | None = None) -> list[Path]:
    """Write ``image`` (a CT in HU, or a PET in SUVbw) as one series; returns the files in slice order.

    A PET is stored in Bq/mL (``SUV / SUV_FACTOR``) with Units BQML, DecayCorrection START and the weight, dose,
    half-life and injection time that make :data:`SUV_FACTOR` the SUVbw factor; ``corrected_image`` None leaves
    CorrectedImage out.
    """
    pet = modality == "PT"
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    if pet:
        values = values / SUV_FACTOR
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = image.GetSpacing()
    uid = series_uid or generate_uid()
    series_start = dt.datetime(2024, 3, 5, 10, 0, 0)
    injection = series_start - dt.timedelta(seconds=UPTAKE_S)
    written = []
    for k in range(values.shape[0]):
        ds = _file_dataset(PET_IMAGE_STORAGE if pet else CT_IMAGE_STORAGE)
        ds.Modality = modality
        ds.PatientName = "SYNTHETIC^TEST"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19500101"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = series_start.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = series_start.strftime("%H%M%S")
        ds.ImagePositionPatient = [_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.Rows, ds.Columns = values.shape[1], values.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        stored, slope, intercept = _quantised(values[k], integral=not pet)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        ds.PixelData = stored.tobytes()
        if pet:
            ds.Units = "BQML"
            ds.DecayCorrection = "START"
            ds.PatientWeight = _ds(WEIGHT_KG)
            if corrected_image is not None:
                ds.CorrectedImage = list(corrected_image)
            item = Dataset()
            item.RadionuclideTotalDose = _ds(DOSE_BQ)
            item.RadionuclideHalfLife = _ds(HALF_LIFE_S)
            item.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
            ds.RadiopharmaceuticalInformationSequence = [item]
        if edit is not None:
            edit(ds, k)
        path = random_path(root, rng)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
