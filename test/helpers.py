"""Helpers shared by the tests. Phantoms are SYNTHETIC (hecktor.io.phantom); real data is read from ../shared/data."""

from __future__ import annotations

import importlib
import math
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
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def independent_linear_predictor(model: dict, known: dict[str, float]) -> float:
    """The documented formula, term by term from the JSON: intercept + sum(coef * clip((x - mean) / std)).

    ``known`` holds the feature values by name; any other feature is unknown (imputation value, indicator 1).
    """
    total = model["intercept"]
    for col, mean, std, coef in zip(model["columns"], model["means"], model["stds"], model["coefs"], strict=True):
        if col.endswith("_missing"):
            x = 0.0 if col.removesuffix("_missing") in known else 1.0
        else:
            x = known.get(col, model["impute_values"][col])
        total += coef * min(max((x - mean) / std, -model["z_clip"]), model["z_clip"])
    return total


def _independent_tree_walk(tree: dict, x: list[float]) -> float:
    """One tree, node by node in plain Python (the runtime walks all rows at once with numpy)."""
    node = 0
    while tree["feature"][node] >= 0:
        value = x[tree["feature"][node]]
        left = tree["missing_left"][node] if math.isnan(value) else value <= tree["threshold"][node]
        node = tree["left"][node] if left else tree["right"][node]
    return tree["value"][node]


def independent_score(model: dict, known: dict[str, float]) -> float:
    """A model JSON's score for one patient, from its documented definition (hecktor/outcome/predict.py's docstring):
    linear formula, or base + sum of trees / logit of the trees' mean, with an HPV submodel's probability
    as the input ``hpv_probability_predicted``. ``known``: feature values by name, any other is unknown."""
    if "hpv_submodel" in model:
        probability = 1.0 / (1.0 + math.exp(-independent_score(model["hpv_submodel"], known)))
        inner = {k: v for k, v in model.items() if k != "hpv_submodel"}
        return independent_score(inner, {**known, "hpv_probability_predicted": probability})
    if "coefs" in model:
        return independent_linear_predictor(model, known)
    x = []
    for col, mean, std in zip(model["columns"], model["means"], model["stds"], strict=True):
        value = known.get(col, model["impute_values"].get(col, math.nan))
        x.append((value - mean) / std)
    leaves = [_independent_tree_walk(tree, x) for tree in model["trees"]]
    if model["combine"] == "sum":
        return model["base"] + sum(leaves)
    fraction = min(max(sum(leaves) / len(leaves), 1e-4), 1 - 1e-4)
    return math.log(fraction / (1 - fraction))


def clinical_training_module() -> ModuleType:
    """``training/train_clinical_models.py`` as a module; skips when its training dependencies are not installed."""
    pytest.importorskip("sksurv", reason="scikit-survival (training dependency) is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn (training dependency) is not installed")
    return importlib.import_module("training.train_clinical_models")
