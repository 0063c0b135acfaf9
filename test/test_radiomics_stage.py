"""The radiomics stage runs only when a loaded Task 2/3 model reads a radiomics feature.

PyRadiomics is replaced by a stand-in here (no pyradiomics needed): one that raises shows the stage did not run,
one that returns a known value shows the value reaches the model that reads it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hecktor import pipeline as pipeline_module
from hecktor.core.manifest import Manifest
from hecktor.measure.radiomics import FEATURE_NAMES
from hecktor.outcome.predict import load_clinical_models, radiomics_columns
from hecktor.pipeline import Pipeline

TASKS_2_3 = frozenset({2, 3})


def _fail(*args: object, **kwargs: object) -> None:
    raise RuntimeError("PyRadiomics failed")


def test_shipped_models_read_no_radiomics(shipped_manifest: Manifest) -> None:
    assert shipped_manifest.radiomics is not None  # the section is there: only the models make the stage idle
    assert radiomics_columns(load_clinical_models(shipped_manifest.rfs_model, shipped_manifest.hpv_model)) == set()


def test_with_the_shipped_models_the_radiomics_stage_does_not_run(shipped_manifest, phantom_case_dir, monkeypatch):
    monkeypatch.setattr(pipeline_module, "with_radiomics", _fail)
    result = Pipeline(shipped_manifest).run(Path(phantom_case_dir), tasks=TASKS_2_3)
    assert result.predictions is not None and result.measurements is not None
    assert "radiomics" not in {t.stage for t in result.timings}
    assert result.measurements.radiomics is None


def test_a_model_that_reads_a_radiomics_feature_gets_it(shipped_manifest, phantom_case_dir, monkeypatch, tmp_path):
    name = FEATURE_NAMES[0]
    hpv = {"task": "hpv", "kind": "logistic_l2_balanced", "columns": [name], "impute_values": {name: 10.0},
           "means": [10.0], "stds": [2.0], "coefs": [0.5], "intercept": 0.0, "z_clip": 5.0, "threshold": 0.5}
    (tmp_path / "hpv.json").write_text(json.dumps(hpv))
    manifest = dataclasses.replace(shipped_manifest, hpv_model=tmp_path / "hpv.json")
    seen = []

    def fake_radiomics(measured, labels, pet, ct, config):
        seen.append(config)
        return dataclasses.replace(measured, radiomics={name: 14.0})

    monkeypatch.setattr(pipeline_module, "with_radiomics", fake_radiomics)
    result = Pipeline(manifest).run(Path(phantom_case_dir), tasks=TASKS_2_3)
    assert seen == [shipped_manifest.radiomics] and "radiomics" in {t.stage for t in result.timings}
    assert result.predictions is not None
    assert result.predictions.details["hpv_logit"] == pytest.approx(0.5 * (14.0 - 10.0) / 2.0)  # = 1.0
    # ... and a Task 1 run still computes none.
    monkeypatch.setattr(pipeline_module, "with_radiomics", _fail)
    assert Pipeline(manifest).run(Path(phantom_case_dir), tasks=frozenset({1})).labels is not None
