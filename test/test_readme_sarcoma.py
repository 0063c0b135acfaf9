"""The README's sarcoma Dice figures are what its commands give (real data; skips without ``../shared/data``).

The figures used to be measured against the PET-grid masks by a resampling no command offers; this runs the
README's recipe (platform layout, ``inference.py --tasks 1``, ``python -m hecktor evaluate`` against the CT
masks) and compares each case's ``dice_gtvp`` with the number quoted in the README's table row.
"""

from __future__ import annotations

import re
import shutil

import pytest
from helpers import REPO, STS_CASES, require_sts, run_inference

from hecktor.apps.evaluate import evaluate_folder

ROW = re.compile(r"^\| segmentation: `pet-threshold` \(default\) \|.*$", re.MULTILINE)


def _readme_figures() -> dict[str, float]:
    row = ROW.search((REPO / "README.md").read_text())
    assert row, "README: no pet-threshold row in the Bundled models table"
    return {case: float(value) for case, value in re.findall(r"(STS_\d{3}) (\d\.\d+)", row.group(0))}


@pytest.mark.slow
def test_readme_sarcoma_dice_is_what_the_readme_commands_give(tmp_path):
    sts = require_sts()
    quoted = _readme_figures()
    assert set(quoted) == set(STS_CASES), quoted
    (tmp_path / "ref").mkdir()
    for case in STS_CASES:
        for modality, name in (("ct", "CT"), ("pet", "PET")):
            folder = tmp_path / "in" / case / "images" / modality
            folder.mkdir(parents=True)
            shutil.copy(sts / f"{case}_{name}_image.nii.gz", folder / f"{case}.nii.gz")
        shutil.copy(sts / f"{case}_CT_mask.nii.gz", tmp_path / "ref" / f"{case}.nii.gz")
        result = run_inference(tmp_path / "in" / case, tmp_path / "pred" / case, "--tasks", "1")
        assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["case_id"]: row for row in evaluate_folder(tmp_path / "pred", tmp_path / "ref")["cases"]}
    for case, figure in quoted.items():
        decimals = len(str(figure).split(".")[1])
        assert rows[case]["dice_gtvp"] == pytest.approx(figure, abs=0.5 * 10 ** -decimals), case
