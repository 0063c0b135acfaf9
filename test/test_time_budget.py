"""The ensemble fits the platform's time limit, and the ONNX Runtime path runs without torch.

Networks here are tiny and random (NOT trained): only timing, planning and plumbing are tested.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO

from hecktor.apps.cli import case_deadline
from hecktor.core.geometry import make_grid
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, load_manifest
from hecktor.core.types import Roi
from hecktor.preprocess.normalise import normalise_ct, normalise_pet
from hecktor.segment.ensemble import load_ensemble, plan_inference

TINY_STUNET = {"dims": (4, 8, 8, 8), "depth": (1, 1, 1, 1), "pool_op_kernel_sizes": ((2, 2, 2),) * 3,
               "conv_kernel_sizes": ((3, 3, 3),) * 4}

# ROI 190^3 with 64^3 patches: windows per member = 5^3 = 125 at overlap 0.5 (ceil(126/32) + 1 = 5 per
# axis), 4^3 = 64 at 0.25 (ceil(126/48) + 1), 3^3 = 27 at 0 (ceil(126/64) + 1). Three members, mirror axes
# (0, 1) = 4 passes per window; one second per window.
SHAPE, PATCHES = (190, 190, 190), [(64, 64, 64)] * 3


@pytest.mark.parametrize(
    ("budget", "members", "overlap", "mirrors", "passes", "fits"),
    [
        (None, 3, 0.5, (0, 1), 3 * 125 * 4, True),
        (2000.0, 3, 0.5, (0, 1), 1500, True),
        (1000.0, 3, 0.5, (0,), 3 * 125 * 2, True),
        (400.0, 3, 0.5, (), 3 * 125, True),
        (200.0, 3, 0.25, (), 3 * 64, True),
        (100.0, 3, 0.0, (), 3 * 27, True),
        (60.0, 2, 0.0, (), 2 * 27, True),
        (30.0, 1, 0.0, (), 27, True),
        (10.0, 1, 0.0, (), 27, False),
    ],
)
def test_plan_reduces_mirrors_then_overlap_then_members(budget, members, overlap, mirrors, passes, fits):
    plan = plan_inference(SHAPE, PATCHES, 0.5, (0, 1), seconds_per_window=1.0, budget_s=budget)
    assert (plan.members, plan.overlap, plan.mirror_axes, plan.windows, plan.fits) == (
        members, overlap, mirrors, passes, fits)
    assert plan.estimated_s == pytest.approx(passes * 1.0)
    assert bool(plan.reductions) == ((plan.members, plan.overlap, plan.mirror_axes) != (3, 0.5, (0, 1)))


@pytest.mark.parametrize(
    ("tasks", "limit", "expected"),
    [({1}, None, 600.0), ({2}, None, 900.0), ({2, 3}, None, 600.0), ({1, 2, 3}, 120.0, 120.0), ({1}, 0.0, None)],
)
def test_case_deadline_is_the_tightest_platform_limit(tasks, limit, expected):
    deadline = case_deadline(1000.0, frozenset(tasks), limit)
    assert deadline == (None if expected is None else 1000.0 + expected)


def _tiny_ensemble(folder: Path, onnx: bool = False, patch: int = 32, **options: object) -> Path:
    from training.make_random_weights import make_random_weights

    make_random_weights(folder, members=2, arch_kwargs=TINY_STUNET, patch_size=(patch,) * 3, onnx=onnx,
                        ensemble_options=options)
    for name in ("rfs_model.json", "hpv_model.json"):
        shutil.copy(DEFAULT_WEIGHTS_DIR / name, folder / name)
    return folder


def _roi(shape: tuple[int, int, int] = (48, 40, 56)) -> Roi:
    rng = np.random.default_rng(0)
    grid = make_grid(np.zeros(3), shape[::-1], 1.0, np.eye(3))
    return Roi(grid=grid, ct_hu=rng.normal(40, 200, shape).astype(np.float32),
               pet_suv=rng.gamma(2.0, 1.0, shape).astype(np.float32), center_mm=(0.0, 0.0, 0.0),
               located_by="test", midline_x_mm=0.0, midline_from="test")


def test_engine_runs_the_minimum_when_the_deadline_has_passed(tmp_path, caplog):
    folder = _tiny_ensemble(tmp_path, overlap=0.5, mirror_axes=(0, 2))
    ensemble = load_manifest(folder).ensemble
    engine = load_ensemble(ensemble, folder, device="cpu")
    roi = _roi()
    with caplog.at_level(logging.INFO):
        got = engine.segment(roi, deadline=time.monotonic() - 1.0).values
    assert "does NOT fit" in caplog.text and "ensemble reduced to meet the time limit" in caplog.text
    # The minimum: the first member alone, overlap 0, no mirroring.
    first = engine._members[0]
    image = np.stack([normalise_ct(roi.ct_hu, first.config.ct_normalisation), normalise_pet(roi.pet_suv)])
    logits = first.runner.logits(image, replace(first.settings, overlap=0.0, mirror_axes=()))
    expected = np.exp(logits) / np.exp(logits).sum(axis=0)  # one softmax over the member's blended logits
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_engine_runs_as_configured_when_time_is_ample(tmp_path, caplog):
    folder = _tiny_ensemble(tmp_path, overlap=0.5, mirror_axes=(0,))
    engine = load_ensemble(load_manifest(folder).ensemble, folder, device="cpu")
    roi = _roi()
    with caplog.at_level(logging.INFO):
        planned = engine.segment(roi, deadline=time.monotonic() + 3600.0).values
    assert "(as configured)" in caplog.text
    np.testing.assert_array_equal(planned, engine.segment(roi).values)


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any "import torch" now fails: the image of this flavour has no torch
from hecktor.apps.cli import main
code = main(["run", "--input", sys.argv[1], "--output", sys.argv[2], "--weights-dir", sys.argv[3]])
assert sys.modules["torch"] is None
sys.exit(code)
"""


def test_onnx_ensemble_runs_a_whole_case_without_torch(tmp_path, phantom_case_dir):
    folder = _tiny_ensemble(tmp_path / "weights", onnx=True, patch=64, overlap=0.25)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(phantom_case_dir), str(out), str(folder)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded random_stunet_1 (ONNX" in result.stderr and "ensemble plan:" in result.stderr
    labels = sitk.ReadImage(str(out / "images/tumor-lymph-node-segmentation/output.mha"))
    assert labels.GetSize() == sitk.ReadImage(str(phantom_case_dir / "images/ct/phantom.mha")).GetSize()


class _SlowedRunner:
    """A stand-in member (the engine's planning is under test, not a network): its probe reports fast
    windows, but each real run takes ``run_s``, as on a machine that other work slowed down after the probe.
    Its background probability is ``value``, so the ensemble mean shows which members ran."""

    device = "cpu"

    def __init__(self, value: float, run_s: float) -> None:
        self.value, self.run_s = value, run_s

    def seconds_per_window(self, image: np.ndarray, settings) -> float:
        return 1e-4

    def logits(self, image: np.ndarray, settings) -> np.ndarray:
        time.sleep(self.run_s)
        out = np.full((3, *image.shape[1:]), (1.0 - self.value) / 2, dtype=np.float32)
        out[0] = self.value
        return out


def test_engine_replans_after_each_member_when_the_machine_slows_down(tmp_path, caplog):
    from hecktor.segment.backend import LoadedMember
    from hecktor.segment.ensemble import NETWORK_RESERVE_S, EnsembleEngine
    from hecktor.segment.windows import WindowSettings

    configs = load_manifest(_tiny_ensemble(tmp_path)).ensemble.members
    values = (0.2, 0.4, 0.6, 0.8)
    members = [LoadedMember(configs[i % 2], _SlowedRunner(v, run_s=0.5), WindowSettings(patch_size=(32, 32, 32)))
               for i, v in enumerate(values)]
    engine = EnsembleEngine(members, trained_on_real_data=False)
    start = time.monotonic()
    deadline = start + NETWORK_RESERVE_S + 1.3  # room for two members of 0.5 s, not four
    with caplog.at_level(logging.INFO):
        out = engine.segment(_roi((40, 40, 40)), deadline=deadline).values
    ran = caplog.text.count(" done in ")
    assert 1 <= ran < len(values) and "re-planned after member 1" in caplog.text
    assert time.monotonic() <= deadline - NETWORK_RESERVE_S + 0.5  # finished about in time
    # The softmax of the mean logits of those that ran (each runner's logits: v, (1-v)/2, (1-v)/2).
    mean = np.mean(values[:ran])
    logits = np.array([mean, (1 - mean) / 2, (1 - mean) / 2])
    np.testing.assert_allclose(out[0], np.exp(logits[0]) / np.exp(logits).sum(), rtol=1e-6)


def test_plan_skips_an_overlap_that_saves_no_window():
    """ROI 310 x 200 x 200, 128^3 patches: 0.25 and 0 both tile 3 x 2 x 2 = 12 windows (0.5 tiles 4 x 3 x 3 = 36),
    so a tighter budget drops members at overlap 0.25 instead of claiming a useless overlap of 0."""
    shape, patches = (310, 200, 200), [(128, 128, 128)] * 10
    plan = plan_inference(shape, patches, 0.5, (), seconds_per_window=1.0, budget_s=100.0)
    assert (plan.members, plan.overlap, plan.windows) == (8, 0.25, 96)
    assert plan.reductions == ("overlap 0.5 -> 0.25", "members 10 -> 8")
