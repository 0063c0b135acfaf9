"""Bq/mL detection and normalisation to SUV."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import CLINICAL_DIR, STS_DIR, require_sts

from hecktor.io.phantom import PhantomGeometry, make_phantom
from hecktor.io.suv import to_suv


def test_suv_input_is_left_alone(phantom):
    conversion = to_suv(sitk.GetArrayViewFromImage(phantom.pet))
    assert conversion.detected_units == "SUV" and conversion.factor == 1.0


def test_bqml_phantom_is_detected_and_brought_back_near_suv():
    suv = make_phantom(PhantomGeometry(pet_scale=1.0)).pet
    bqml = make_phantom(PhantomGeometry(pet_scale=4000.0)).pet
    conversion = to_suv(sitk.GetArrayViewFromImage(bqml))
    assert conversion.detected_units == "BQML"
    recovered = float(sitk.GetArrayViewFromImage(bqml).max()) * conversion.factor
    true_max = float(sitk.GetArrayViewFromImage(suv).max())
    # The body-median rule is approximate: within a factor 2 of the truth on a synthetic phantom.
    assert 0.5 * true_max < recovered < 2.0 * true_max


def test_raw_bqml_dicom_series_factor_close_to_dicom_answer():
    require_sts()
    folder = STS_DIR / "STS_001_dicom" / "PET_raw" / "image"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        pet = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
    conversion = to_suv(sitk.GetArrayViewFromImage(pet).astype(np.float32))
    # weight 71 kg, 388.8 MBq decayed over 2711 s from injection to series start (DICOM tags; test_dicom_suv.py)
    dicom_factor = 2.429e-4
    assert conversion.detected_units == "BQML"
    # NOT a validation: BODY_MEDIAN_SUV was calibrated on this very series, so this only guards the
    # implementation against drifting from its calibration. The held-out check is the test below.
    assert conversion.factor == pytest.approx(dicom_factor, rel=0.10)


HELD_OUT_CASES = {"STS_002": 0.05, "STS_003": 0.25}  # patients the constant was NOT fitted on: tolerance


@pytest.mark.parametrize("case", list(HELD_OUT_CASES))
def test_factor_recovered_on_patients_the_constant_was_not_fitted_on(case):
    """Real SUV PETs of other patients, turned into Bq/mL with each of the 51 real HECKTOR factors.

    Measured: the estimate is 0.97x (STS_002) and 1.19x (STS_003) the true factor. These are limb
    fields of view; no head-and-neck PET with a known factor exists here.
    """
    require_sts()
    factors_csv = CLINICAL_DIR / "hecktor_pet_bqml_suv_factors.csv"
    if not factors_csv.is_file():
        pytest.skip(f"{factors_csv} not found (../shared/data is not mounted)")
    import pandas as pd

    factors = pd.read_csv(factors_csv)["bqml_to_suvbw_factor"].to_numpy()
    assert len(factors) == 51
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(STS_DIR / f"{case}_PET_image.nii.gz"))).astype(np.float32)
    for factor in factors:
        conversion = to_suv(suv / np.float32(factor))
        assert conversion.detected_units == "BQML"
        assert conversion.factor == pytest.approx(factor, rel=HELD_OUT_CASES[case])


def test_large_pet_statistics_use_a_bounded_subsample():
    """A whole-body-sized PET is judged on a regular subsample; the decision and factor stay those of the whole."""
    rng = np.random.default_rng(1)
    pet = rng.gamma(2.0, 0.4, size=(300, 260, 260)).astype(np.float32)  # 20 M voxels of SUV-like values
    whole_p999 = float(np.percentile(pet, 99.9))
    conversion = to_suv(pet)
    assert conversion.detected_units == "SUV"
    assert conversion.p999 == pytest.approx(whole_p999, rel=0.02)
    bqml = to_suv(pet * np.float32(4000.0))
    assert bqml.detected_units == "BQML"
    assert bqml.factor * 4000.0 * float(np.median(pet[pet > 0.02 * np.percentile(pet, 99)])) == pytest.approx(
        0.58, rel=0.02)
