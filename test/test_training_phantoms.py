"""SYNTHETIC training datasets (hecktor.io.phantom.write_training_dataset): layout, labels, units, determinism.

Every image here is an analytic phantom, never patient data. The checks measure the written files
independently of the generator (connected components, SUV inside the labels) and compare them with
what the generator says it planted.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import CLINICAL_DIR
from scipy import ndimage

from hecktor.core.types import LABEL_GTVN, LABEL_GTVP
from hecktor.io.phantom import (
    CENTER_IDS,
    GTVP_SPHERE,
    PhantomGeometry,
    TrainingDataset,
    make_phantom,
    make_training_phantom,
    sample_phantom_variant,
    training_case_seed,
    write_training_dataset,
)
from hecktor.io.read import read_case

N_CASES = 8  # two of them (the 4th and 8th) stored in Bq/mL
BQML_COLUMNS = ["pid", "units", "patient_weight_kg", "radiopharmaceutical", "radionuclide_total_dose_bq",
                "radionuclide_half_life_sec", "elapsed_seconds_injection_to_scan", "decay_corrected_dose_at_scan_bq",
                "dose_for_suv_bq", "bqml_to_suvbw_factor"]
# sha256 of make_phantom()'s arrays, computed with hecktor/io/phantom.py BEFORE the training generator was added.
MAKE_PHANTOM_SHA256 = {
    "ct": "439b8fd2c24650b503d24e8ed7b7dd679fdd08b6d85a343bb849f76dd0105800",
    "pet": "f655e044b365c36dcd471bf66471da992dde51df8f7ea29767d6cabf7cde7074",
    "labels": "97b2693c2269c2fb39ef3fa8ca9afbcb1642b0794ec3ab24cf15f5506721df71",
}
MAKE_PHANTOM_GEOMETRY = {  # origin, spacing (direction: identity)
    "ct": ((-119.0, -119.0, 0.0), (2.0, 2.0, 3.0)),
    "pet": ((-126.0, -126.0, 1.0), (4.0, 4.0, 3.0)),
    "labels": ((-119.0, -119.0, 0.0), (2.0, 2.0, 3.0)),
}
# Same, for a flipped-z CT in Bq/mL-like units with another noise seed (whole arrays + geometry).
MAKE_PHANTOM_VARIANT_SHA256 = "c3148a588a2a69a4c7ed62165abce27a9186a10880869ca1ecfed32d2b4574d5"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> TrainingDataset:
    return write_training_dataset(tmp_path_factory.mktemp("synthetic") / "hecktor", N_CASES, seed=0)


def _case_files(dataset: TrainingDataset, case_id: str) -> tuple[Path, Path, Path]:
    folder = dataset.task1_dir / case_id
    return folder / f"{case_id}__CT.nii.gz", folder / f"{case_id}__PT.nii.gz", folder / f"{case_id}.nii.gz"


def _bqml_factors(dataset: TrainingDataset) -> dict[str, float]:
    with dataset.bqml_factors_csv.open(newline="") as handle:
        return {row["pid"]: float(row["bqml_to_suvbw_factor"]) for row in csv.DictReader(handle)}


def _read_suv(dataset: TrainingDataset, case_id: str) -> sitk.Image:
    """The PET as written, converted to SUV with the factor from the dataset's Bq/mL table where listed."""
    pet = sitk.ReadImage(str(_case_files(dataset, case_id)[1]), sitk.sitkFloat64)
    factor = _bqml_factors(dataset).get(case_id)
    return pet if factor is None else pet * factor


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))


def _array_digest(image: sitk.Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes()).hexdigest()


# --------------------------------------------------------------------------- layout


def test_layout_and_tables(dataset: TrainingDataset):
    assert dataset.task1_dir == dataset.root / "Task 1"
    assert len(dataset.case_ids) == N_CASES == len(set(dataset.case_ids))
    centres = ("CHUM", "CHUS", "HGJ", "MDA")
    for index, case_id in enumerate(dataset.case_ids):
        assert re.fullmatch(r"[A-Z]+-\d{3}", case_id), case_id
        assert dataset.centre_of[case_id] == centres[index % 4] == case_id.split("-")[0]
        assert all(path.is_file() and path.stat().st_size > 0 for path in _case_files(dataset, case_id))
    assert dataset.case_ids[:5] == ("CHUM-001", "CHUS-001", "HGJ-001", "MDA-001", "CHUM-002")

    with (dataset.task1_dir / "HECKTOR_2025_Training_Task_1.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["PatientID"] for r in rows] == list(dataset.case_ids)
    assert all(int(r["CenterID"]) == CENTER_IDS[dataset.centre_of[r["PatientID"]]] for r in rows)
    assert {r["CenterID"] for r in rows} == {"1", "3", "6", "5"}  # CHUM, CHUS, HGJ, MDA (docs/interface.md)

    readme = (dataset.root / "README_SYNTHETIC.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT PATIENT DATA" in readme
    assert json.loads((dataset.root / "synthetic_lesions.json").read_text())["synthetic"] is True


def test_bqml_table_has_the_shared_columns_and_every_fourth_case(dataset: TrainingDataset):
    assert dataset.bqml_factors_csv == dataset.root / "bqml_suv_factors.csv"
    assert dataset.bqml_cases == (dataset.case_ids[3], dataset.case_ids[7])
    with dataset.bqml_factors_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == BQML_COLUMNS
    shared = CLINICAL_DIR / "hecktor_pet_bqml_suv_factors.csv"
    if shared.is_file():
        assert shared.read_text().splitlines()[0].split(",") == BQML_COLUMNS
    assert [r["pid"] for r in rows] == list(dataset.bqml_cases)
    for row in rows:
        factor = float(row["bqml_to_suvbw_factor"])
        assert 2.5e-4 <= factor <= 6e-4
        # The fillers agree with the factor as in the real table: weight (g) / decay-corrected dose.
        implied = float(row["patient_weight_kg"]) * 1000.0 / float(row["dose_for_suv_bq"])
        assert implied == pytest.approx(factor, rel=1e-6)
    assert len({r["bqml_to_suvbw_factor"] for r in rows}) == len(rows)  # a factor per case


def test_read_case_reads_every_case(dataset: TrainingDataset):
    for case_id in dataset.case_ids:
        case = read_case(dataset.task1_dir / case_id)
        assert case.case_id == case_id
        labels = sitk.ReadImage(str(_case_files(dataset, case_id)[2]))
        assert labels.GetPixelID() == sitk.sitkUInt8
        assert labels.GetSize() == case.ct.GetSize()
        np.testing.assert_allclose(labels.GetOrigin(), case.ct.GetOrigin())
        np.testing.assert_allclose(labels.GetSpacing(), case.ct.GetSpacing())
        np.testing.assert_allclose(labels.GetDirection(), case.ct.GetDirection())
        assert case.pet.GetSize() == (64, 64, 110)
        assert float(sitk.GetArrayViewFromImage(case.pet).max()) < 100.0  # read_case hands back SUV-range values


# --------------------------------------------------------------------------- labels


def test_labels_hold_one_gtvp_and_the_planted_nodes(dataset: TrainingDataset):
    node_counts = []
    for case_id in dataset.case_ids:
        labels = sitk.ReadImage(str(_case_files(dataset, case_id)[2]))
        array = sitk.GetArrayFromImage(labels)
        assert set(np.unique(array).tolist()) <= {0, LABEL_GTVP, LABEL_GTVN}
        gtvp, n_gtvp = _components(array == LABEL_GTVP)
        assert n_gtvp == 1, case_id
        nodes, n_nodes = _components(array == LABEL_GTVN)
        variant = sample_phantom_variant(dataset.seed_of[case_id])
        assert n_nodes == len(variant.gtvn), case_id
        planted = json.loads((dataset.root / "synthetic_lesions.json").read_text())["cases"][case_id]
        assert len(planted["gtvn"]) == n_nodes
        node_counts.append(n_nodes)

        voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
        (_, radius) = variant.gtvp
        assert (array == LABEL_GTVP).sum() * voxel_ml == pytest.approx(4.0 / 3.0 * np.pi * radius**3 / 1000.0, rel=0.15)
        # Where the components are (physical x = left-right): the primary near the midline, nodes lateral.
        shift_x = variant.shift_mm[0]
        centroid = ndimage.center_of_mass(gtvp > 0)
        x = labels.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroid[::-1]])[0]
        assert abs(x - shift_x) < 20.0, case_id
        for index in range(1, n_nodes + 1):
            centroid = ndimage.center_of_mass(nodes == index)
            x = labels.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroid[::-1]])[0]
            assert abs(x - shift_x) > 28.0, case_id
    assert len(set(node_counts)) >= 2  # the number of nodes varies across cases


def test_drawn_lesions_stay_in_the_neck_and_apart():
    counts = set()
    for seed in range(300):
        v = sample_phantom_variant(seed)
        counts.add(len(v.gtvn))
        shift = np.asarray(v.shift_mm)
        assert np.all(np.abs(shift[:2]) <= 6.0) and abs(shift[2]) <= 9.0
        spheres = [v.gtvp, *v.gtvn]
        for (c1, r1), (c2, r2) in itertools.combinations(spheres, 2):
            assert np.linalg.norm(np.subtract(c1, c2)) >= r1 + r2 + 4.2, seed  # no touching voxels
        site = np.asarray(GTVP_SPHERE[0]) + shift
        assert np.linalg.norm(np.asarray(v.gtvp[0]) - site) <= 10.0 + 1e-6
        assert 9.0 <= v.gtvp[1] <= 16.0 and 8.0 <= v.gtvp_suv <= 16.0 and 8.0 <= v.gtvn_suv <= 14.0
        a, b = v.neck_semi_axes_mm
        for centre, radius in spheres:
            local = np.asarray(centre) - shift
            for angle in np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False):
                x, y = local[0] + radius * np.cos(angle), local[1] + radius * np.sin(angle)
                assert (x / a) ** 2 + (y / b) ** 2 <= 1.0, seed
            assert local[2] + radius <= 200.0
        for centre, radius in v.gtvn:
            assert abs(centre[0] - shift[0]) >= 30.0 and 7.0 <= radius <= 11.0
    assert counts == {0, 1, 2, 3}


# --------------------------------------------------------------------------- PET units and uptake


def test_bqml_cases_convert_back_to_the_suv_phantom(dataset: TrainingDataset):
    factors = _bqml_factors(dataset)
    for case_id in dataset.case_ids:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(_case_files(dataset, case_id)[1]), sitk.sitkFloat64))
        suv = sitk.GetArrayFromImage(make_training_phantom(dataset.seed_of[case_id]).pet).astype(np.float64)
        if case_id in dataset.bqml_cases:
            assert raw.max() >= 0.999 * suv.max() / 6e-4  # Bq/mL-like: SUV / factor, factor <= 6e-4
            assert np.median(raw[suv > 0.5]) > 1000.0
            np.testing.assert_allclose(factors[case_id] * raw, suv, rtol=1e-4, atol=1e-6)
        else:
            assert case_id not in factors
            np.testing.assert_allclose(raw, suv, rtol=1e-6, atol=1e-6)


def test_lesions_lie_where_the_pet_is_hot(dataset: TrainingDataset):
    for case_id in dataset.case_ids:
        ct_path, _, label_path = _case_files(dataset, case_id)
        ct = sitk.ReadImage(str(ct_path))
        suv = sitk.GetArrayFromImage(sitk.Resample(_read_suv(dataset, case_id), ct, sitk.Transform(),
                                                   sitk.sitkLinear, 0.0, sitk.sitkFloat64))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        body_median = float(np.median(suv[sitk.GetArrayViewFromImage(ct) > -500]))
        assert 0.3 < body_median < 3.0, case_id
        assert suv[labels == LABEL_GTVP].mean() > 3.0 * body_median, case_id
        if (labels == LABEL_GTVN).any():
            assert suv[labels == LABEL_GTVN].mean() > 2.0 * body_median, case_id


# --------------------------------------------------------------------------- determinism and variation


def test_same_seed_gives_identical_files(dataset: TrainingDataset, tmp_path: Path):
    again = write_training_dataset(tmp_path / "again", 4, seed=0)  # a case does not depend on n_cases
    assert again.case_ids == dataset.case_ids[:4]
    assert again.bqml_cases == dataset.bqml_cases[:1]
    for case_id in again.case_ids:
        for first, second in zip(_case_files(dataset, case_id), _case_files(again, case_id), strict=True):
            assert first.read_bytes() == second.read_bytes(), first.name
    assert again.bqml_factors_csv.read_text().splitlines() == dataset.bqml_factors_csv.read_text().splitlines()[:2]
    for name in ("ct", "pet", "labels"):
        assert _array_digest(getattr(make_training_phantom(5), name)) == _array_digest(
            getattr(make_training_phantom(5), name))


def test_seeds_give_different_cases(dataset: TrainingDataset, tmp_path: Path):
    other = write_training_dataset(tmp_path / "held-out", 2, seed=1, bqml_every=0)
    assert other.bqml_cases == () and _bqml_factors(other) == {}
    for case_id in other.case_ids:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(_case_files(dataset, case_id)[2])))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(_case_files(other, case_id)[2])))
        assert not np.array_equal(a, b), case_id
    labels = [sitk.GetArrayFromImage(make_training_phantom(seed).labels) for seed in (0, 1)]
    assert not np.array_equal(*labels)
    seeds = {training_case_seed(s, i) for s in (0, 1) for i in range(N_CASES)}
    assert len(seeds) == 2 * N_CASES
    assert len(set(dataset.seed_of.values())) == N_CASES


def test_training_phantom_honours_the_geometry():
    geometry = PhantomGeometry(ct_size=(100, 100, 80), pet_size=(50, 50, 80), flip_ct_z=True)
    phantom = make_training_phantom(7, geometry)
    assert phantom.ct.GetSize() == phantom.labels.GetSize() == (100, 100, 80)
    assert phantom.pet.GetSize() == (50, 50, 80)
    assert phantom.ct.GetDirection()[8] == -1.0
    assert (sitk.GetArrayViewFromImage(phantom.labels) == LABEL_GTVP).any()


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_seeds_are_refused(bad):
    with pytest.raises(ValueError, match="seed"):
        sample_phantom_variant(bad)


# --------------------------------------------------------------------------- the default phantom


def test_make_phantom_is_unchanged():
    phantom = make_phantom()
    for name, digest in MAKE_PHANTOM_SHA256.items():
        image = getattr(phantom, name)
        assert _array_digest(image) == digest, name
        origin, spacing = MAKE_PHANTOM_GEOMETRY[name]
        assert image.GetOrigin() == origin and image.GetSpacing() == spacing
        assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_make_phantom_variant_geometry_is_unchanged():
    phantom = make_phantom(PhantomGeometry(flip_ct_z=True, pet_scale=4000.0, noise_seed=3))
    digest = hashlib.sha256()
    for image in (phantom.ct, phantom.pet, phantom.labels):
        array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
        digest.update(repr((image.GetOrigin(), image.GetSpacing(), image.GetDirection())).encode())
    assert digest.hexdigest() == MAKE_PHANTOM_VARIANT_SHA256
