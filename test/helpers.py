"""Helpers shared by the tests. Phantoms are SYNTHETIC (hecktor.phantom); real data is read from ../shared/data."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
STS_DIR = SHARED_DATA / "sts"
CLINICAL_DIR = SHARED_DATA / "clinical"
STS_CASES = ("STS_001", "STS_002", "STS_003")


def require_sts() -> Path:
    if not (STS_DIR / "STS_001_PET_image.nii.gz").is_file():
        pytest.skip(f"real sarcoma PET/CT cases not found in {STS_DIR} (../shared/data is not mounted)")
    return STS_DIR


def sts_training_layout(tmp_path: Path, case: str) -> Path:
    """Link a real sarcoma case into the HECKTOR training layout (<ID>__CT.nii.gz, <ID>__PT.nii.gz)."""
    sts = require_sts()
    folder = tmp_path / case
    folder.mkdir()
    (folder / f"{case}__CT.nii.gz").symlink_to(sts / f"{case}_CT_image.nii.gz")
    (folder / f"{case}__PT.nii.gz").symlink_to(sts / f"{case}_PET_image.nii.gz")
    return folder


def run_inference(input_dir: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess, as the container does."""
    return subprocess.run(
        [sys.executable, str(REPO / "inference.py"), "--input", str(input_dir), "--output", str(output_dir), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def independent_linear_predictor(model: dict, known: dict[str, float]) -> float:
    """The documented formula, term by term from the JSON: intercept + sum(coef * clip((x - mean) / std)).

    ``known`` holds the feature values by name; any other feature is unknown (median, indicator 1).
    """
    total = model["intercept"]
    for col, mean, std, coef in zip(model["columns"], model["means"], model["stds"], model["coefs"], strict=True):
        if col.endswith("_missing"):
            x = 0.0 if col.removesuffix("_missing") in known else 1.0
        else:
            x = known.get(col, model["medians"][col])
        total += coef * min(max((x - mean) / std, -model["z_clip"]), model["z_clip"])
    return total


def clinical_training_module() -> ModuleType:
    """``training/train_clinical_models.py`` as a module; skips when its training dependencies are not installed."""
    pytest.importorskip("sksurv", reason="scikit-survival (training dependency) is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn (training dependency) is not installed")
    return importlib.import_module("training.train_clinical_models")
