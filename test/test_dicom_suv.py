"""SUVbw from PET DICOM header tags (hecktor.io.dicom.suv).

Synthetic headers are built here with pydicom (no files); every expected factor is written out as the
arithmetic ``weight_g / (dose * 2 ** (-decay_s / half_life_s))`` with the times read off the header by hand,
never by calling the code under test. The known answer is the raw BQML series of STS_001 in ../shared/data
against the SUV NIfTI of the same patient.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import STS_DIR
from pydicom import Dataset

from hecktor.io.dicom.suv import MissingSuvTag, SuvFromHeader, suv_from_header

# The synthetic patient: 70 kg, 350 MBq of 18F (half-life 6586.2 s) injected at 09:15:00, series at 10:15:00.
WEIGHT_G = 70_000.0
DOSE_BQ = 350e6
HALF_LIFE_S = 6586.2
ONE_HOUR_S = 3600.0


def pet_header(**tags: object) -> Dataset:
    """A minimal BQML / START PET header; keyword arguments override or (with None) delete top-level tags."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT"]
    ds.PatientWeight = "70"
    ds.SeriesDate = "20240301"
    ds.SeriesTime = "101500"
    ds.AcquisitionDate = "20240301"
    ds.AcquisitionTime = "101500"
    ds.RescaleSlope = "1.0"
    ds.RescaleIntercept = "0"
    item = Dataset()
    item.RadionuclideTotalDose = "350000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadiopharmaceuticalStartTime = "091500.00"
    ds.RadiopharmaceuticalInformationSequence = [item]
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def drug(ds: Dataset) -> Dataset:
    return ds.RadiopharmaceuticalInformationSequence[0]


def philips(ds: Dataset, offset: int, value: str) -> Dataset:
    """Add a Philips PET private element (7053,10xx) under its creator, as the scanner writes it."""
    ds.Units = "CNTS"
    ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(offset, "DS", value)
    return ds


# --- hand-computed factors ------------------------------------------------------------------------------------


def test_bqml_start_decays_the_dose_from_injection_to_the_series_time():
    result = suv_from_header([pet_header()])
    # 09:15:00 -> 10:15:00 is 3600 s.
    expected = WEIGHT_G / (DOSE_BQ * 2 ** (-3600.0 / HALF_LIFE_S))  # = 2.921e-4
    assert result.units == "BQML" and result.decay_reference == "START"
    assert result.decay_seconds == pytest.approx(ONE_HOUR_S)
    assert result.factor == pytest.approx(expected, rel=1e-12)
    assert result.per_slice_factor is None
    assert (result.weight_kg, result.injected_dose_bq, result.half_life_s) == (70.0, DOSE_BQ, HALF_LIFE_S)


def test_bqml_admin_does_not_decay_the_dose():
    # Images decay-corrected to the administration: the whole dose, no decay; half-life and injection time unused.
    ds = pet_header(DecayCorrection="ADMIN")
    del drug(ds).RadionuclideHalfLife
    del drug(ds).RadiopharmaceuticalStartTime
    result = suv_from_header([ds])
    assert result.factor == pytest.approx(WEIGHT_G / DOSE_BQ, rel=1e-12)  # 70 000 g / 350e6 Bq = 2.0e-4
    assert result.decay_reference == "ADMIN" and result.decay_seconds == 0.0


def test_radiopharmaceutical_start_datetime_wins_over_start_time():
    ds = pet_header()
    drug(ds).RadiopharmaceuticalStartDateTime = "20240301091000.000000"  # 09:10:00, five minutes before StartTime
    result = suv_from_header([ds])
    # 09:10:00 -> 10:15:00 is 3900 s.
    assert result.decay_seconds == pytest.approx(3900.0)
    assert result.factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2 ** (-3900.0 / HALF_LIFE_S)), rel=1e-12)


def test_start_datetime_with_a_utc_offset_is_read_as_local_time():
    ds = pet_header()
    drug(ds).RadiopharmaceuticalStartDateTime = "20240301091000+0100"
    assert suv_from_header([ds]).decay_seconds == pytest.approx(3900.0)


def test_start_time_before_midnight_for_a_scan_after_it():
    # Injected 23:30:00 on 1 March, series at 00:30:00 on 2 March: 3600 s, not -82 800 s.
    ds = pet_header(SeriesDate="20240302", SeriesTime="003000", AcquisitionDate="20240302", AcquisitionTime="003000")
    drug(ds).RadiopharmaceuticalStartTime = "233000"
    result = suv_from_header([ds])
    assert result.decay_seconds == pytest.approx(3600.0)
    assert result.factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2 ** (-3600.0 / HALF_LIFE_S)), rel=1e-12)


def test_start_datetime_on_the_previous_day():
    ds = pet_header(SeriesDate="20240302", SeriesTime="003000", AcquisitionDate="20240302", AcquisitionTime="003000")
    drug(ds).RadiopharmaceuticalStartDateTime = "20240301234500"  # 23:45:00 the day before: 2700 s
    assert suv_from_header([ds]).factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2 ** (-2700.0 / HALF_LIFE_S)))


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")  # pydicom warns when the test sets them
def test_acr_nema_times_with_colons():
    ds = pet_header(SeriesTime="10:15:00", AcquisitionTime="10:15:00")
    drug(ds).RadiopharmaceuticalStartTime = "09:15:00"
    assert suv_from_header([ds]).decay_seconds == pytest.approx(3600.0)


def test_post_processed_series_uses_the_earliest_acquisition_time():
    # Series written at 12:00 (a later reconstruction); the beds were acquired from 10:15:00 on (QIBA).
    slices = [pet_header(SeriesTime="120000", AcquisitionTime=t) for t in ("102100", "101500", "101800")]
    result = suv_from_header(slices)
    assert result.decay_seconds == pytest.approx(3600.0)  # 09:15:00 -> 10:15:00
    assert result.factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2 ** (-3600.0 / HALF_LIFE_S)), rel=1e-12)
    assert result.per_slice_factor is None  # START refers every slice to one moment


def test_post_processed_series_prefers_the_ge_private_scan_time():
    ds = pet_header(SeriesTime="120000", AcquisitionTime="101500")
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20240301101000")
    result = suv_from_header([ds])
    assert result.decay_seconds == pytest.approx(3300.0)  # 09:15:00 -> 10:10:00
    assert result.factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2 ** (-3300.0 / HALF_LIFE_S)), rel=1e-12)


def test_series_time_is_kept_when_acquisitions_start_after_it():
    # The usual case (Siemens writes each bed's start as its acquisition time): the series start is the reference.
    slices = [pet_header(AcquisitionTime=t) for t in ("101500", "101900", "102300")]
    assert suv_from_header(slices).decay_seconds == pytest.approx(3600.0)


def test_cnts_philips_suv_scale_factor_is_the_factor():
    result = suv_from_header([philips(pet_header(), 0x00, "0.000321")])
    assert result.units == "CNTS" and result.factor == pytest.approx(0.000321)
    assert result.per_slice_factor is None


def test_cnts_philips_suv_scale_factor_differing_per_slice():
    slices = [philips(pet_header(), 0x00, v) for v in ("0.000300", "0.000310", "0.000330")]
    result = suv_from_header(slices)
    assert result.per_slice_factor == pytest.approx((0.000300, 0.000310, 0.000330))
    assert result.factor == pytest.approx(0.000310)  # the median, for the log


def test_cnts_philips_activity_concentration_scale_factor_then_the_bqml_rule():
    # (7053,1009) turns the rescaled value into Bq/mL; then weight over decayed dose, as for BQML.
    result = suv_from_header([philips(pet_header(), 0x09, "1.5")])
    assert result.factor == pytest.approx(1.5 * WEIGHT_G / (DOSE_BQ * 2 ** (-3600.0 / HALF_LIFE_S)), rel=1e-12)
    assert result.decay_reference == "START"


def test_cnts_philips_factor_stored_as_raw_bytes_without_a_creator():
    # Some anonymisers drop the private creator and leave the value as undecoded bytes (VR UN).
    ds = pet_header(Units="CNTS")
    ds.add_new((0x7053, 0x1000), "UN", b"0.000321")
    assert suv_from_header([ds]).factor == pytest.approx(0.000321)


def test_gml_is_already_suv():
    ds = pet_header(Units="GML")
    del ds.PatientWeight  # nothing else is needed
    result = suv_from_header([ds])
    assert (result.units, result.factor, result.per_slice_factor) == ("GML", 1.0, None)


def test_summary_is_one_line_without_dates():
    result = suv_from_header([pet_header()])
    assert isinstance(result, SuvFromHeader)
    assert "\n" not in result.summary and "2024" not in result.summary
    assert "BQML" in result.summary and "START" in result.summary


# --- refusals: each required tag removed, zeroed or wrong in turn ------------------------------------------------

RP = "RadiopharmaceuticalInformationSequence[0]"


def _drop_drug(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(drug(ds), keyword)


def _set_drug(keyword: str, value: str) -> Callable[[Dataset], None]:
    return lambda ds: setattr(drug(ds), keyword, value)


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _drop(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


REFUSALS: list[tuple[str, Callable[[Dataset], None], str, str]] = [
    # (case, change to the valid BQML/START header, expected .tag, a word of the reason)
    ("units absent", _drop("Units"), "Units (0054,1001)", "absent"),
    ("units unsupported", _set("Units", "CPS"), "Units (0054,1001)", "unsupported"),
    ("weight absent", _drop("PatientWeight"), "PatientWeight (0010,1030)", "absent"),
    ("weight empty", _set("PatientWeight", ""), "PatientWeight (0010,1030)", "absent"),
    ("weight zero", _set("PatientWeight", "0"), "PatientWeight (0010,1030)", "zero"),
    ("weight in grams", _set("PatientWeight", "70000"), "PatientWeight (0010,1030)", "implausible"),
    ("drug sequence absent", _drop("RadiopharmaceuticalInformationSequence"),
     "RadiopharmaceuticalInformationSequence (0054,0016)", "absent"),
    ("drug sequence empty", _set("RadiopharmaceuticalInformationSequence", []),
     "RadiopharmaceuticalInformationSequence (0054,0016)", "absent"),
    ("dose absent", _drop_drug("RadionuclideTotalDose"), f"{RP}.RadionuclideTotalDose (0018,1074)", "absent"),
    ("dose zero", _set_drug("RadionuclideTotalDose", "0"), f"{RP}.RadionuclideTotalDose (0018,1074)", "zero"),
    ("dose in MBq", _set_drug("RadionuclideTotalDose", "350"), f"{RP}.RadionuclideTotalDose (0018,1074)", "MBq"),
    ("half-life absent", _drop_drug("RadionuclideHalfLife"), f"{RP}.RadionuclideHalfLife (0018,1075)", "absent"),
    ("half-life zero", _set_drug("RadionuclideHalfLife", "0"), f"{RP}.RadionuclideHalfLife (0018,1075)", "zero"),
    ("injection time absent", _drop_drug("RadiopharmaceuticalStartTime"),
     f"{RP}.RadiopharmaceuticalStartTime (0018,1072)", "absent"),
    ("injection time unparseable", _set_drug("RadiopharmaceuticalStartTime", "9h15"),
     f"{RP}.RadiopharmaceuticalStartTime (0018,1072)", "unparseable"),
    ("injection datetime after the scan", _set_drug("RadiopharmaceuticalStartDateTime", "20240301110000"),
     f"{RP}.RadiopharmaceuticalStartDateTime (0018,1078)", "after"),
    # 14:00 is later in the day than the 10:15 scan, so read as the day before: 20 h 15 min, 11 half-lives.
    ("injection time later the same day", _set_drug("RadiopharmaceuticalStartTime", "140000"),
     f"{RP}.RadiopharmaceuticalStartTime (0018,1072)", "implausible"),
    ("decay correction absent", _drop("DecayCorrection"), "DecayCorrection (0054,1102)", "absent"),
    ("decay correction none", _set("DecayCorrection", "NONE"), "DecayCorrection (0054,1102)", "NONE"),
    ("decay correction unknown", _set("DecayCorrection", "XYZ"), "DecayCorrection (0054,1102)", "unsupported"),
    ("series date absent", _drop("SeriesDate"), "SeriesDate (0008,0021)", "absent"),
    ("series time absent", _drop("SeriesTime"), "SeriesTime (0008,0031)", "absent"),
    ("series time unparseable", _set("SeriesTime", "99"), "SeriesTime (0008,0031)", "unparseable"),
    ("not attenuation-corrected", _set("CorrectedImage", ["DECY", "SCAT"]), "CorrectedImage (0028,0051)", "ATTN"),
    ("not decay-corrected", _set("CorrectedImage", ["ATTN", "SCAT"]), "CorrectedImage (0028,0051)", "DECY"),
    ("cnts without philips factors", _set("Units", "CNTS"), "Philips SUV Scale Factor (7053,1000)", "CNTS"),
    ("admin without weight", lambda ds: (_set("DecayCorrection", "ADMIN")(ds), _drop("PatientWeight")(ds)),
     "PatientWeight (0010,1030)", "absent"),
    ("admin without dose", lambda ds: (_set("DecayCorrection", "ADMIN")(ds), _drop_drug("RadionuclideTotalDose")(ds)),
     f"{RP}.RadionuclideTotalDose (0018,1074)", "absent"),
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")  # the unparseable rows warn on assignment
@pytest.mark.parametrize(("change", "tag", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_header_lacking_what_suv_needs_is_refused_naming_the_tag(change, tag, reason):
    ds = pet_header()
    change(ds)
    with pytest.raises(MissingSuvTag) as caught:
        suv_from_header([ds])
    assert caught.value.tag == tag
    assert reason in caught.value.reason
    assert str(caught.value).startswith(tag)


def test_slices_of_different_acquisitions_are_refused():
    with pytest.raises(MissingSuvTag) as caught:
        suv_from_header([pet_header(), pet_header(PatientWeight="80")])
    assert caught.value.tag == "PatientWeight (0010,1030)" and "differs between slices" in caught.value.reason


def test_refusal_survives_pickling():
    # The series reader may run in worker processes; the exception must cross the boundary intact.
    error = pickle.loads(pickle.dumps(MissingSuvTag("PatientWeight (0010,1030)", "absent or empty")))
    assert (error.tag, error.reason) == ("PatientWeight (0010,1030)", "absent or empty")


def test_no_slices_is_a_programming_error():
    with pytest.raises(ValueError):
        suv_from_header([])


# --- known answer: the raw BQML series of STS_001 against its SUV NIfTI -----------------------------------------


def _stack(slices: list[Dataset], values: list[np.ndarray]) -> sitk.Image:
    """A volume from classic single-frame slices, built here independently of hecktor.io.dicom.volume."""
    orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    along = [float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)) for ds in slices]
    order = np.argsort(along)
    positions = np.sort(along)
    image = sitk.GetImageFromArray(np.stack([values[i] for i in order]))
    spacing_xy = [float(v) for v in slices[0].PixelSpacing]  # row spacing (y), column spacing (x)
    # The positions of this series deviate from a regular grid by at most 0.04 mm; the mean step is the one
    # the reference NIfTI has (3.27 mm).
    image.SetSpacing((spacing_xy[1], spacing_xy[0], (positions[-1] - positions[0]) / (len(positions) - 1)))
    image.SetOrigin(tuple(float(v) for v in slices[int(order[0])].ImagePositionPatient))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel().tolist()))
    return image


def _relative_errors(image: sitk.Image, reference: sitk.Image) -> tuple[np.ndarray, int]:
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat64)
    a = sitk.GetArrayFromImage(resampled)
    b = sitk.GetArrayFromImage(reference).astype(np.float64)
    compared = (b > 0.5) & np.isfinite(a)  # body voxels, inside the raw series' extent
    return np.abs(a[compared] - b[compared]) / b[compared], int(compared.sum())


def _sts001_pet_series(folder_name: str, what: str) -> tuple[list, Path]:
    """The slices of one of STS_001's PET DICOM series and the SUV NIfTI they must reproduce (skip when absent)."""
    folder = STS_DIR / "STS_001_dicom" / folder_name / "image"
    reference_path = STS_DIR / "STS_001_PET_image.nii.gz"
    files = sorted(folder.glob("*.dcm"))
    if not files or not reference_path.is_file():
        pytest.skip(f"{what} PET DICOM of STS_001 not found in {folder} (../shared/data is not mounted)")
    import pydicom

    return [pydicom.dcmread(f) for f in files], reference_path


def test_raw_dicom_series_reproduces_the_suv_nifti():
    slices, reference_path = _sts001_pet_series("PET_raw", "raw")
    conversion = suv_from_header(slices)
    assert conversion.units == "BQML" and conversion.decay_reference == "START"
    # By hand from the tags: 71 kg, 388 777 472 Bq injected at 10:35:00, series at 11:20:11 (2711 s), half-life 6588 s.
    assert conversion.factor == pytest.approx(71_000 / (388_777_472 * 2 ** (-2711 / 6588)), rel=1e-12)

    factors = conversion.per_slice_factor or (conversion.factor,) * len(slices)
    # Each slice's own rescale slope: on this GE series they span 0.21 to 8.4, so one slope for all would be wrong.
    slopes = [float(ds.RescaleSlope) for ds in slices]
    assert max(slopes) / min(slopes) > 10
    suv = [
        (ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) * f
        for ds, f in zip(slices, factors, strict=True)
    ]
    reference = sitk.ReadImage(str(reference_path))
    relative, voxels = _relative_errors(_stack(slices, suv), reference)
    median, p99, worst = float(np.median(relative)), float(np.percentile(relative, 99)), float(relative.max())
    print(f"\nSTS_001 raw DICOM -> SUV vs NIfTI: {voxels} voxels with SUV > 0.5; relative error median {median:.2e}, "
          f"99th percentile {p99:.2e}, max {worst:.2e}; factor {conversion.factor:.6e}")
    assert voxels > 10_000
    # The reference was made from a GML re-encoding of the crop (16-bit integers with their own slope per slice),
    # so it is quantised: the largest errors are that rounding on low values, not a factor error.
    assert median <= 1e-4
    assert p99 <= 1e-3

    # The check has teeth: the first slice's slope applied to every slice misses by far.
    one_slope = [
        (ds.pixel_array.astype(np.float64) * slopes[0] + float(ds.RescaleIntercept)) * f
        for ds, f in zip(slices, factors, strict=True)
    ]
    wrong, _ = _relative_errors(_stack(slices, one_slope), reference)
    assert float(np.median(wrong)) > 0.1


def test_cropped_gml_series_is_already_suv():
    """The DICOM crop of STS_001 is stored as GML with ADMIN decay correction: factor 1, equal to the NIfTI."""
    slices, reference_path = _sts001_pet_series("PET_crop", "cropped")
    conversion = suv_from_header(slices)
    assert (conversion.units, conversion.factor, conversion.per_slice_factor) == ("GML", 1.0, None)
    suv = [ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices]
    relative, voxels = _relative_errors(_stack(slices, suv), sitk.ReadImage(str(reference_path)))
    print(f"\nSTS_001 GML crop vs NIfTI: {voxels} voxels; relative error median {np.median(relative):.2e}, "
          f"max {relative.max():.2e}")
    assert float(np.percentile(relative, 99)) <= 1e-3
