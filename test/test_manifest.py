"""The model manifest: the shipped one loads; broken ones are refused with the file and problem named."""

from __future__ import annotations

import json

import pytest

from hecktor.cli import main
from hecktor.manifest import ManifestError, load_manifest


def test_shipped_manifest_selects_the_pet_threshold_engine():
    manifest = load_manifest()
    assert manifest.engine == "pet-threshold"
    assert manifest.preprocess.roi_size_mm == (200.0, 200.0, 310.0)
    assert manifest.rfs_model.is_file() and manifest.hpv_model.is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model manifest not found"),
        ("{oops", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({"segmentation": {"engine": "magic"}}), "must be 'pet-threshold' or 'ensemble'"),
        (json.dumps({"segmentation": {"engine": "ensemble"}}), "no ensemble members"),
        (json.dumps({"preprocess": {"roi_size": [1, 2, 3]}}), "unknown keys"),
    ],
    ids=["missing", "bad-json", "not-object", "unknown-engine", "no-members", "unknown-key"],
)
def test_broken_manifest_is_refused(tmp_path, content, message):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message) as error:
        load_manifest(tmp_path)
    assert "manifest.json" in str(error.value)


def test_cli_exits_3_on_a_broken_manifest(tmp_path, phantom_case_dir):
    (tmp_path / "manifest.json").write_text("{oops")
    out = tmp_path / "out"
    code = main(["run", "--input", str(phantom_case_dir), "--output", str(out), "--weights-dir", str(tmp_path)])
    assert code == 3
    assert not out.exists()
