"""The one data path: read case -> preprocess -> segment -> restore -> measure -> predict -> write.

:class:`Pipeline` loads the manifest's models once and serves many cases; the faces
(``inference.py``, ``python -m hecktor run``) only parse arguments and call it.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from hecktor.manifest import Manifest
from hecktor.measure import measure
from hecktor.predict import ClinicalModels, load_clinical_models, predict
from hecktor.preprocess import extract_roi
from hecktor.read import read_case
from hecktor.restore import restore_to_ct_grid
from hecktor.segment import SegmentationEngine, build_engine
from hecktor.types import Case, Measurements, Predictions, Roi
from hecktor.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH, write_json, write_label_image

__all__ = ["ALL_TASKS", "CaseResult", "Pipeline", "StageTiming", "write_outputs"]

log = logging.getLogger(__name__)

ALL_TASKS = frozenset({1, 2, 3})


@dataclass(frozen=True)
class StageTiming:
    stage: str
    seconds: float
    peak_rss_mb: float


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    labels: sitk.Image | None
    measurements: Measurements
    predictions: Predictions | None
    roi_located_by: str
    engine: str
    timings: tuple[StageTiming, ...] = field(default=())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _StageClock:
    def __init__(self) -> None:
        self.timings: list[StageTiming] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timing = StageTiming(name, time.perf_counter() - start, peak_rss_mb())
        self.timings.append(timing)
        log.info("stage %-10s %6.2f s   peak RSS %7.0f MB", name, timing.seconds, timing.peak_rss_mb)


class Pipeline:
    """Loads the segmentation engine and clinical models once; :meth:`run` processes one case."""

    def __init__(self, manifest: Manifest, device: str | None = None) -> None:
        self.manifest = manifest
        self.engine: SegmentationEngine = build_engine(manifest, device)
        self.clinical_models: ClinicalModels = load_clinical_models(manifest.rfs_model, manifest.hpv_model)
        log.info("%s", self.clinical_models.provenance)
        if self.engine.trained_on_real_data:
            log.info("segmentation engine: %s", self.engine.name)
        else:
            log.warning(
                "segmentation engine: %s -- NOT a network trained on HECKTOR data%s",
                self.engine.name,
                " (a rule-based SUV threshold method)" if self.engine.name == "pet-threshold" else "",
            )

    def segment_case(self, case: Case, clock: _StageClock) -> tuple[sitk.Image, Roi]:
        with clock.stage("preprocess"):
            roi = extract_roi(case, self.manifest.preprocess)
        with clock.stage("segment"):
            probabilities = self.engine.segment(roi)
        with clock.stage("restore"):
            labels = restore_to_ct_grid(probabilities, case.ct, self.manifest.postprocess)
        return labels, roi

    def run(self, input_dir: Path, tasks: frozenset[int] = ALL_TASKS) -> CaseResult:
        """Compute every requested output of the case in ``input_dir``; writes nothing."""
        clock = _StageClock()
        with clock.stage("read"):
            case = read_case(input_dir)
        for note in case.notes:
            log.warning("%s", note)
        # Tasks 2 and 3 use measurements from the segmentation, so it always runs.
        labels, roi = self.segment_case(case, clock)
        with clock.stage("measure"):
            measurements = measure(labels, case.pet)
        log.info("measurements: %s", {k: round(v, 2) if isinstance(v, float) else v
                                      for k, v in measurements.as_dict().items()})
        predictions = None
        if tasks & {2, 3}:
            with clock.stage("predict"):
                predictions = predict(self.clinical_models, case.clinical, measurements)
            log.info("RFS risk %.4f, HPV probability %.3f -> %s", predictions.rfs_risk,
                     predictions.hpv_probability, "positive" if predictions.hpv_positive else "negative")
        return CaseResult(
            case_id=case.case_id,
            labels=labels if 1 in tasks else None,
            measurements=measurements,
            predictions=predictions,
            roi_located_by=roi.located_by,
            engine=self.engine.name,
            timings=tuple(clock.timings),
        )


def write_outputs(result: CaseResult, output_dir: Path, tasks: frozenset[int] = ALL_TASKS) -> list[Path]:
    """Write the platform outputs of ``result`` for ``tasks``; returns the written paths."""
    written = []
    if 1 in tasks and result.labels is not None:
        write_label_image(result.labels, output_dir / SEGMENTATION_PATH)
        written.append(output_dir / SEGMENTATION_PATH)
    if 2 in tasks and result.predictions is not None:
        write_json(float(result.predictions.rfs_risk), output_dir / RFS_PATH)
        written.append(output_dir / RFS_PATH)
    if 3 in tasks and result.predictions is not None:
        write_json(bool(result.predictions.hpv_positive), output_dir / HPV_PATH)
        written.append(output_dir / HPV_PATH)
    return written
