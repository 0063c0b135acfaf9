"""The hostile-input suite (cases in ``hostile_cases.py``) through the real command line, under both policies.

Each run must end with the expected exit code and log, and either the complete, valid set of outputs
(exit 0) or nothing at all in the output folder (any refusal). No run may end in a traceback.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO
from hostile_cases import CASES, OUTPUTS, HostileCase, run_hostile_case, write_base_case

from hecktor.core.policy import RECOVERABLE


@pytest.fixture(scope="module")
def base_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_base_case(tmp_path_factory.mktemp("hostile_base") / "case")


def _input_ct(input_dir: Path, ct_folder: str = "images/ct") -> Path:
    (ct,) = [p for p in (input_dir / ct_folder).iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix == ".mha"]
    return ct


def _assert_complete_valid_outputs(input_dir: Path, output_dir: Path, ct_folder: str) -> None:
    present = sorted(p.relative_to(output_dir) for p in output_dir.rglob("*") if p.is_file())
    # A local run (not /input) also records which case the folder holds.
    assert present == sorted([*OUTPUTS, Path("case.json")]), f"expected the three outputs and case.json: {present}"
    labels = sitk.ReadImage(str(output_dir / OUTPUTS[0]))
    ct = sitk.ReadImage(str(_input_ct(input_dir, ct_folder)))
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) <= {0, 1, 2}
    rfs = json.loads((output_dir / OUTPUTS[1]).read_text())
    assert isinstance(rfs, float) and math.isfinite(rfs)
    assert isinstance(json.loads((output_dir / OUTPUTS[2]).read_text()), bool)


def _assert_nothing_written(output_dir: Path) -> None:
    leftovers = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*")) if output_dir.exists() else []
    assert leftovers == [], f"a refused case left {leftovers}"


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: HostileCase, strict: bool, base_case: Path, tmp_path: Path) -> None:
    expected = case.strict if strict else case.default
    result = run_hostile_case(case, base_case, tmp_path, strict)
    assert result.exit_code == expected.exit_code, f"exit {result.exit_code}; log tail:\n{result.log[-3000:]}"
    for fragment in expected.log_contains:
        assert fragment in result.log, f"{fragment!r} not in the log:\n{result.log[-3000:]}"
    assert "Traceback" not in result.log
    if expected.exit_code == 0:
        _assert_complete_valid_outputs(result.input_dir, result.output_dir, case.ct_folder)
    else:
        _assert_nothing_written(result.output_dir)
        (error,) = [line for line in result.log.splitlines() if line.startswith("ERROR")]
        assert "\n" not in error


def test_suite_covers_enough_cases_with_unique_names() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


def test_every_recoverable_problem_is_exercised_under_both_policies() -> None:
    exercised = {fragment for c in CASES if c.default.exit_code == 0 and c.strict.exit_code == 2
                 for fragment in c.default.log_contains}
    assert set(RECOVERABLE) <= exercised, f"not exercised: {sorted(set(RECOVERABLE) - exercised)}"


def test_readme_policy_table_lists_every_recoverable_problem() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Input policy"):]
    codes = set(re.findall(r"`([a-z-]+)`", table[: table.index("\n## ", 3)]))
    assert set(RECOVERABLE) <= codes, f"missing from the README table: {sorted(set(RECOVERABLE) - codes)}"
