"""``python -m hecktor batch``: layouts, equality with the single-case command, resume, failures, kills, Ray.

Phantom cases are SYNTHETIC (hecktor.io.phantom, written here with different noise seeds); the real sarcoma cases
come from ../shared/data/sts (skipped with a reason when absent). The kill campaign and the Ray run print what they
did (``pytest -s``); ``pytest -m slow test/test_batch.py`` runs the longer variants.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, STS_CASES, require_sts

from hecktor.apps.case_record import RECORD_NAME
from hecktor.apps.cli import inference_main, main
from hecktor.core.files import sha256_of
from hecktor.io.phantom import SAMPLE_EHR, PhantomGeometry, make_phantom
from hecktor.io.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH, STAGING_PREFIX, TRASH_PREFIX

SAMPLE_CASE = REPO / "test" / "sample-case"
PLATFORM_OUTPUTS = (SEGMENTATION_PATH, RFS_PATH, HPV_PATH)
SYNTHETIC_IDS = ("SYN-001", "SYN-002")
POLL_S = 0.0005


# --------------------------------------------------------------------------- helpers


def write_synthetic_flat(folder: Path, case_ids: tuple[str, ...]) -> Path:
    """SYNTHETIC phantom pairs <ID>__CT.nii.gz / <ID>__PT.nii.gz / <ID>__ehr.json, each with its own noise."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, case_id in enumerate(case_ids, start=1):
        phantom = make_phantom(PhantomGeometry(noise_seed=seed))
        sitk.WriteImage(phantom.ct, str(folder / f"{case_id}__CT.nii.gz"), useCompression=True)
        sitk.WriteImage(phantom.pet, str(folder / f"{case_id}__PT.nii.gz"), useCompression=True)
        (folder / f"{case_id}__ehr.json").write_text(json.dumps({**SAMPLE_EHR, "Age": 50 + seed}))
    return folder


def case_folders_from_flat(flat: Path, folder: Path, case_ids: tuple[str, ...]) -> Path:
    """The same files as case folders in the training layout (symlinks: the very same bytes)."""
    for case_id in case_ids:
        case = folder / case_id
        case.mkdir(parents=True)
        (case / f"{case_id}__CT.nii.gz").symlink_to(flat / f"{case_id}__CT.nii.gz")
        (case / f"{case_id}__PT.nii.gz").symlink_to(flat / f"{case_id}__PT.nii.gz")
        (case / "ehr.json").symlink_to(flat / f"{case_id}__ehr.json")
    return folder


def batch(*argv: object) -> int:
    return main(["batch", *map(str, argv)])


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def read_outputs(folder: Path) -> dict[str, object]:
    labels = sitk.ReadImage(str(folder / SEGMENTATION_PATH))
    return {"labels": sitk.GetArrayFromImage(labels), "spacing": labels.GetSpacing(), "origin": labels.GetOrigin(),
            "direction": labels.GetDirection(), "pixel": labels.GetPixelIDTypeAsString(),
            "rfs": json.loads((folder / RFS_PATH).read_text()), "hpv": json.loads((folder / HPV_PATH).read_text())}


def assert_same_outputs(a: Path, b: Path) -> None:
    left, right = read_outputs(a), read_outputs(b)
    assert np.array_equal(left.pop("labels"), right.pop("labels")), f"{a} vs {b}: labels differ"
    assert left == right, f"{a} vs {b}"


def record_without_timings(folder: Path) -> dict:
    record = json.loads((folder / RECORD_NAME).read_text())
    for key in ("timings", "run", "inputs", "product"):
        record.pop(key)
    return record


def independent_volumes_ml(label_file: Path) -> tuple[float, float]:
    image = sitk.ReadImage(str(label_file))
    array = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    voxel_ml = abs(np.linalg.det(direction)) * float(np.prod(image.GetSpacing())) / 1000.0
    return float((array == 1).sum() * voxel_ml), float((array == 2).sum() * voxel_ml)


def assert_rows_match_outputs(out: Path, rows: dict[str, dict[str, str]]) -> None:
    """Each summary row agrees with the files of its folder, read back and measured independently."""
    for case_id, row in rows.items():
        if row["status"] == "failed":
            continue
        folder = out / case_id
        gtvp, gtvn = independent_volumes_ml(folder / SEGMENTATION_PATH)
        assert float(row["gtvp_volume_ml"]) == pytest.approx(gtvp, rel=1e-9, abs=1e-9), case_id
        assert float(row["gtvn_volume_ml"]) == pytest.approx(gtvn, rel=1e-9, abs=1e-9), case_id
        assert float(row["rfs_risk"]) == json.loads((folder / RFS_PATH).read_text()), case_id
        assert (row["hpv_positive"] == "True") == json.loads((folder / HPV_PATH).read_text()), case_id
        assert 0.0 <= float(row["hpv_probability"]) <= 1.0
        assert json.loads((folder / RECORD_NAME).read_text())["case_id"] == case_id


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- layouts, resume, failures


@pytest.fixture(scope="module")
def synthetic_flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_flat(tmp_path_factory.mktemp("flat"), SYNTHETIC_IDS)


@pytest.fixture(scope="module")
def folders_run(tmp_path_factory: pytest.TempPathFactory, synthetic_flat: Path) -> tuple[Path, Path]:
    """One batch over SYNTHETIC case folders: (input, output)."""
    root = tmp_path_factory.mktemp("folders")
    cases = case_folders_from_flat(synthetic_flat, root / "in", SYNTHETIC_IDS)
    assert batch(cases, root / "out") == 0
    return cases, root / "out"


def test_three_layouts_give_the_same_ids_and_results(tmp_path: Path, synthetic_flat: Path,
                                                     folders_run: tuple[Path, Path]) -> None:
    _, folders_out = folders_run
    assert batch(synthetic_flat, tmp_path / "flat-out") == 0
    listing = tmp_path / "list" / "cases.csv"
    listing.parent.mkdir()
    shutil.copytree(synthetic_flat, tmp_path / "images")  # the same bytes, reached by paths relative to the CSV
    first = SYNTHETIC_IDS[0]
    # One row by image columns (paths relative to the CSV), one by a case folder; PatientID names the case.
    rows = [{"PatientID": first, "ct": f"../images/{first}__CT.nii.gz", "pet": f"../images/{first}__PT.nii.gz",
             "ehr": f"../images/{first}__ehr.json", "path": ""},
            {"PatientID": "", "ct": "", "pet": "", "ehr": "", "path": str(folders_run[0] / SYNTHETIC_IDS[1])}]
    with open(listing, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert batch(listing, tmp_path / "csv-out") == 0
    for out in (tmp_path / "flat-out", tmp_path / "csv-out"):
        assert sorted(summary_rows(out)) == sorted(SYNTHETIC_IDS)
        for case_id in SYNTHETIC_IDS:
            assert_same_outputs(folders_out / case_id, out / case_id)
            assert record_without_timings(folders_out / case_id) == record_without_timings(out / case_id)
            assert (out / case_id / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_rows_match_outputs(folders_out, summary_rows(folders_out))
    # The two SYNTHETIC cases differ (noise, age): a runner mixing them up would show here.
    assert read_outputs(folders_out / SYNTHETIC_IDS[0])["rfs"] != read_outputs(folders_out / SYNTHETIC_IDS[1])["rfs"]


def test_duplicate_and_unsafe_ids(tmp_path: Path, synthetic_flat: Path, caplog: pytest.LogCaptureFixture) -> None:
    listing = tmp_path / "cases.csv"
    ct, pet = synthetic_flat / f"{SYNTHETIC_IDS[0]}__CT.nii.gz", synthetic_flat / f"{SYNTHETIC_IDS[0]}__PT.nii.gz"
    listing.write_text(f"case_id,ct,pet\nA1,{ct},{pet}\na1,{ct},{pet}\n")
    assert batch(listing, tmp_path / "out") == 2
    assert "'a1' is given twice" in caplog.text and "line 2" in caplog.text and "line 3" in caplog.text
    assert not (tmp_path / "out").exists()  # refused before anything is written

    from hecktor.io.layouts import find_cases
    listing.write_text(f"case_id,ct,pet\n../evil id,{ct},{pet}\n")
    _, [source] = find_cases(listing)
    assert source.case_id == ".._evil_id".replace(".", "_", 1)


def test_rerun_skips_done_cases_and_recomputes_a_changed_one(tmp_path: Path, folders_run: tuple[Path, Path]) -> None:
    cases, done = folders_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    inputs = tmp_path / "in"
    shutil.copytree(cases, inputs, symlinks=False)  # real files: one is changed below
    before = mtimes(out / SYNTHETIC_IDS[0])
    # Same bytes at other paths: same sha256, so still complete.
    assert batch(inputs, out) == 0
    assert {r["status"] for r in summary_rows(out).values()} == {"skipped"}
    assert mtimes(out / SYNTHETIC_IDS[0]) == before

    ehr = inputs / SYNTHETIC_IDS[1] / "ehr.json"
    ehr.unlink()
    ehr.write_text(json.dumps({**SAMPLE_EHR, "Age": 80}))
    assert batch(inputs, out, "--quick-resume") == 0
    rows = summary_rows(out)
    assert rows[SYNTHETIC_IDS[0]]["status"] == "skipped" and rows[SYNTHETIC_IDS[1]]["status"] == "ok"
    assert mtimes(out / SYNTHETIC_IDS[0]) == before
    record = json.loads((out / SYNTHETIC_IDS[1] / RECORD_NAME).read_text())
    assert {f["role"]: f["sha256"] for f in record["inputs"]}["ehr"] == sha256_of(ehr)
    assert_rows_match_outputs(out, rows)


def test_a_bad_case_fails_alone(tmp_path: Path, folders_run: tuple[Path, Path],
                                caplog: pytest.LogCaptureFixture) -> None:
    cases, done = folders_run
    inputs = tmp_path / "in"
    shutil.copytree(cases, inputs, symlinks=True)
    bad = inputs / "BAD-003"
    bad.mkdir()
    # Not a NIfTI file at all. (A .nii.gz truncated to a third is read WITHOUT error, its missing voxels as 0:
    # a reader problem reported separately, so this test does not rely on it.)
    (bad / "BAD-003__CT.nii.gz").write_bytes(b"\x1f\x8b corrupt " * 500)
    (bad / "BAD-003__PT.nii.gz").symlink_to(cases / SYNTHETIC_IDS[0] / f"{SYNTHETIC_IDS[0]}__PT.nii.gz")
    (inputs / "NOPET-004").mkdir()
    shutil.copy(bad / "BAD-003__CT.nii.gz", inputs / "NOPET-004" / "NOPET-004__CT.nii.gz")
    out = tmp_path / "out"
    shutil.copytree(done, out)
    assert batch(inputs, out) == 5
    rows = summary_rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {SYNTHETIC_IDS[0]: "skipped", SYNTHETIC_IDS[1]: "skipped",
                                                          "BAD-003": "failed", "NOPET-004": "failed"}
    assert "BAD-003__CT.nii.gz" in rows["BAD-003"]["error"] and "PET image is missing" in rows["NOPET-004"]["error"]
    assert "case BAD-003 failed" in caplog.text
    assert json.loads((out / "summary.json").read_text())["counts"]["failed"] == 2
    assert not (out / "BAD-003").exists() or not any((out / "BAD-003").iterdir())


def test_whole_batch_problems_have_their_exit_codes(tmp_path: Path, folders_run: tuple[Path, Path]) -> None:
    assert batch(tmp_path / "missing", tmp_path / "out") == 2
    (tmp_path / "empty").mkdir()
    assert batch(tmp_path / "empty", tmp_path / "out") == 2
    assert batch(folders_run[0], tmp_path / "out", "--weights-dir", tmp_path / "empty") == 3
    (tmp_path / "file").write_text("")
    assert batch(folders_run[0], tmp_path / "file") == 4


# --------------------------------------------------------------------------- equality with the single-case command


def test_batch_equals_single_case_command_on_real_sarcoma_and_sample(tmp_path: Path) -> None:
    sts = require_sts()
    cases = tmp_path / "in"
    cases.mkdir()
    for case_id in STS_CASES:  # real PET/CT (PET already in SUV), training layout in case folders
        (cases / case_id).mkdir()
        (cases / case_id / f"{case_id}__CT.nii.gz").symlink_to(sts / f"{case_id}_CT_image.nii.gz")
        (cases / case_id / f"{case_id}__PT.nii.gz").symlink_to(sts / f"{case_id}_PET_image.nii.gz")
    shutil.copytree(SAMPLE_CASE, cases / "sample")  # the bundled SYNTHETIC sample, platform layout
    start = time.perf_counter()
    assert batch(cases, tmp_path / "out", "--no-qc") == 0
    batch_s = time.perf_counter() - start
    rows = summary_rows(tmp_path / "out")
    assert sorted(rows) == sorted([*STS_CASES, "sample"])
    single_s = 0.0
    for case_id in rows:
        start = time.perf_counter()
        assert inference_main(["--input", str(cases / case_id), "--output", str(tmp_path / "single" / case_id)]) == 0
        single_s += time.perf_counter() - start
        assert_same_outputs(tmp_path / "out" / case_id, tmp_path / "single" / case_id)
        ct = sitk.ReadImage(str(next((cases / case_id).rglob("*CT*")) if case_id != "sample"
                                 else cases / case_id / "images/ct/phantom.mha"))
        labels = sitk.ReadImage(str(tmp_path / "out" / case_id / SEGMENTATION_PATH))
        assert labels.GetSize() == ct.GetSize() and labels.GetOrigin() == ct.GetOrigin()
    assert_rows_match_outputs(tmp_path / "out", rows)
    print(f"\nbatch of {len(rows)} cases: {batch_s:.1f} s; single-case command, one process per case's "
          f"worth of model loading in-process: {single_s:.1f} s")
    for case_id, row in rows.items():
        print(case_id, {k: row[k] for k in ("seconds", "read_s", "preprocess_s", "segment_s", "gtvp_volume_ml",
                                            "gtvn_volume_ml", "node_count", "rfs_risk", "hpv_positive")})


# --------------------------------------------------------------------------- kills


def complete_records(out: Path) -> dict[str, tuple[str, str]]:
    """(run id, creation time) of every case folder whose set is complete."""
    found = {}
    for record_file in out.glob(f"*/{RECORD_NAME}"):
        record = json.loads(record_file.read_text())
        found[record_file.parent.name] = (record["run"]["run_id"], record["run"]["created"])
    return found


def assert_complete_and_valid(out: Path, flat: Path, case_ids: tuple[str, ...]) -> None:
    for case_id in case_ids:
        folder = out / case_id
        record = json.loads((folder / RECORD_NAME).read_text())
        assert record["case_id"] == case_id == folder.name
        hashes = {f["role"]: f["sha256"] for f in record["inputs"]}
        assert hashes["ct"] == sha256_of(flat / f"{case_id}__CT.nii.gz")
        assert hashes["pet"] == sha256_of(flat / f"{case_id}__PT.nii.gz")
        ct = sitk.ReadImage(str(flat / f"{case_id}__CT.nii.gz"))
        labels = sitk.ReadImage(str(folder / SEGMENTATION_PATH))
        assert labels.GetPixelID() == sitk.sitkUInt8 and labels.GetSize() == ct.GetSize()
        assert np.allclose(labels.GetOrigin(), ct.GetOrigin()) and np.allclose(labels.GetSpacing(), ct.GetSpacing())
        rfs = json.loads((folder / RFS_PATH).read_text())
        assert isinstance(rfs, float) and math.isfinite(rfs)
        assert isinstance(json.loads((folder / HPV_PATH).read_text()), bool)
        assert not list(folder.glob(f"{STAGING_PREFIX}*")) and not list(folder.glob(f"{TRASH_PREFIX}*"))


def small_roi_weights(folder: Path) -> Path:
    """The bundled models with a smaller ROI box (150 x 150 x 260 mm, still holding the phantom's lesions and
    brain): the same code path at about half the cost per case, so that 20 kills fit the test's time."""
    shutil.copytree(REPO / "model_weights", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["preprocess"]["roi_size_mm"] = [150.0, 150.0, 260.0]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def batch_command(flat: Path, out: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "hecktor", "batch", str(flat), str(out), "--no-qc", "--weights-dir", str(weights)]


def batch_process(flat: Path, out: Path, weights: Path) -> subprocess.Popen:
    return subprocess.Popen(batch_command(flat, out, weights), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_campaign(tmp_path: Path, kills: int, case_count: int, max_delay_s: float) -> Counter:
    """SIGKILL the batch at random instants (seeded), then run it to the end; assert the invariants throughout."""
    case_ids = tuple(f"KILL-{i:03d}" for i in range(case_count))
    flat = write_synthetic_flat(tmp_path / "in", case_ids)
    out = tmp_path / "out"
    weights = small_roi_weights(tmp_path / "weights")
    rng = random.Random(20261204)
    seen: dict[str, tuple[str, str]] = {}
    counts: Counter = Counter()
    for run in range(kills):
        proc = batch_process(flat, out, weights)
        if run % 4 == 3:  # aimed at a commit: its marker is on disk for microseconds to milliseconds
            while proc.poll() is None and next(out.glob(f"*/{STAGING_PREFIX}*/COMMIT"), None) is None:
                time.sleep(POLL_S)
            counts["aimed at a commit"] += 1
        else:
            time.sleep(rng.uniform(0.0, max_delay_s))
        if proc.poll() is None:
            proc.kill()
            counts["killed"] += 1
        else:
            counts["finished before the kill"] += 1
        _, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        for case_id, stamp in complete_records(out).items():
            # A complete set is never computed again: its run id and creation time stay.
            assert seen.setdefault(case_id, stamp) == stamp, f"{case_id} was recomputed after being complete"
        counts["journals left"] += len(list(out.glob(f"*/{STAGING_PREFIX}*/COMMIT")))
        counts["complete after the kill"] = len(complete_records(out))
    final = subprocess.run(batch_command(flat, out, weights), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_complete_and_valid(out, flat, case_ids)
    for case_id, stamp in complete_records(out).items():
        assert seen.setdefault(case_id, stamp) == stamp, f"{case_id} was recomputed after being complete"
    rows = summary_rows(out)
    assert sorted(rows) == sorted(case_ids) and all(r["status"] in ("ok", "skipped") for r in rows.values())
    assert not list(out.glob(".summary.*")) and not list(out.glob(f"{STAGING_PREFIX}*"))
    counts["computed by the final run"] = sum(r["status"] == "ok" for r in rows.values())
    return counts


def test_sigkill_at_random_instants_then_restart(tmp_path: Path) -> None:
    counts = kill_campaign(tmp_path, kills=20, case_count=4, max_delay_s=8.0)
    print(f"\nbatch kill campaign (SYNTHETIC): {dict(counts)}")


@pytest.mark.slow
def test_sigkill_campaign_long(tmp_path: Path) -> None:
    counts = kill_campaign(tmp_path, kills=60, case_count=6, max_delay_s=20.0)
    print(f"\nbatch kill campaign (SYNTHETIC, long): {dict(counts)}")


# --------------------------------------------------------------------------- Ray


def test_ray_executor_gives_the_same_outputs(tmp_path: Path, synthetic_flat: Path,
                                             folders_run: tuple[Path, Path]) -> None:
    ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install -r requirements/ray.txt)")
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        assert batch(synthetic_flat, tmp_path / "out", "--executor", "ray", "--cores-per-worker", "1") == 0
        run_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    _, local = folders_run
    for case_id in SYNTHETIC_IDS:
        assert_same_outputs(local / case_id, tmp_path / "out" / case_id)
        assert record_without_timings(local / case_id) == record_without_timings(tmp_path / "out" / case_id)
    rows = summary_rows(tmp_path / "out")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert_rows_match_outputs(tmp_path / "out", rows)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["executor"] == "ray"
    print(f"\nray: local cluster started in {startup_s:.1f} s; batch of {len(rows)} SYNTHETIC cases on 2 actors "
          f"in {run_s:.1f} s")
