"""The one data path: read case -> preprocess -> segment -> restore -> measure -> predict (-> write).

:class:`Pipeline` loads the manifest's models once and serves many cases: :meth:`Pipeline.run_case`
takes a :class:`~hecktor.core.types.Case` (any reader can feed it), :meth:`Pipeline.run` reads one from a
folder and applies the input policy first. Writing belongs to the faces (``hecktor.apps.cli``), which
publish a case's outputs all together through :mod:`hecktor.io.write`.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import image_on_grid
from hecktor.core.manifest import Manifest
from hecktor.core.policy import apply_input_policy
from hecktor.core.types import Case, DicomSeriesRef, Measurements, Predictions, RecoverableProblem, Roi
from hecktor.io.read import read_case
from hecktor.measure.lesions import measure, with_radiomics
from hecktor.outcome.predict import ClinicalModels, load_clinical_models, radiomics_columns
from hecktor.outcome.runtime import outcome_network_or_none, predict_tasks_2_3
from hecktor.preprocess.roi import extract_roi
from hecktor.restore import restore_to_ct_grid
from hecktor.segment import SegmentationEngine, build_engine

__all__ = ["ALL_TASKS", "CaseResult", "Pipeline", "StageClock", "StageTiming", "has_uptake", "peak_rss_mb"]

log = logging.getLogger(__name__)

ALL_TASKS = frozenset({1, 2, 3})
# The measurements the run log shows (not the radiomics features, which the --report JSON holds).
_LOGGED_MEASUREMENTS = frozenset(f for f in Measurements.__dataclass_fields__ if f != "radiomics")


@dataclass(frozen=True)
class StageTiming:
    stage: str
    seconds: float
    peak_rss_mb: float


@dataclass(frozen=True)
class CaseResult:
    """Everything computed for one case. ``measurements`` is ``None`` when segmentation was skipped
    (a PET without uptake): Tasks 2/3 then come from the clinical record alone."""

    case_id: str
    labels: sitk.Image | None
    measurements: Measurements | None
    predictions: Predictions | None
    roi_located_by: str
    engine: str
    problems: tuple[RecoverableProblem, ...] = ()
    timings: tuple[StageTiming, ...] = field(default=())
    # The DICOM series the case was read from (Case.dicom_series; empty for image files): case.json records them.
    dicom_series: tuple[DicomSeriesRef, ...] = ()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageClock:
    """Per-stage wall time and peak memory of one case (one clock per case; not shared between threads)."""

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
        # Radiomics are computed only when a loaded model reads one (an error inside PyRadiomics must not fail a
        # case for features nobody reads); the outcome network's inputs hold none.
        self.radiomics_needed = radiomics_columns(self.clinical_models)
        if manifest.radiomics is not None and not self.radiomics_needed:
            log.info("radiomics: not computed (no loaded Task 2/3 model reads a radiomics feature)")
        # Tasks 2/3 from images when the manifest lists a network (None: the clinical models answer).
        self.outcome_network = outcome_network_or_none(manifest, device)
        if self.engine.trained_on_real_data:
            log.info("segmentation engine: %s", self.engine.name)
        else:
            log.warning(
                "segmentation engine: %s -- NOT a network trained on HECKTOR data%s",
                self.engine.name,
                " (a rule-based SUV threshold method)" if self.engine.name == "pet-threshold" else "",
            )

    def preprocess(self, case: Case, clock: StageClock) -> Roi:
        """The case's ROI (a pure function of the case and the manifest: the batch runner calls it in its reader
        thread, so that the next case is preprocessed while this one is segmented)."""
        with clock.stage("preprocess"):
            return extract_roi(case, self.manifest.preprocess)

    def segment_case(self, case: Case, clock: StageClock, deadline: float | None = None,
                     roi: Roi | None = None) -> tuple[sitk.Image, Roi]:
        """The label image on the CT grid, and the ROI it was segmented on (``roi``: already extracted)."""
        if roi is None:
            roi = self.preprocess(case, clock)
        with clock.stage("segment"):
            probabilities = self.engine.segment(roi, deadline)
        with clock.stage("restore"):
            labels = restore_to_ct_grid(probabilities, case.ct, self.manifest.postprocess)
        return labels, roi

    def run_case(
        self,
        case: Case,
        tasks: frozenset[int] = ALL_TASKS,
        clock: StageClock | None = None,
        deadline: float | None = None,
        roi: Roi | None = None,
    ) -> CaseResult:
        """Compute every requested output of ``case``; writes nothing.

        ``deadline``: ``time.monotonic()`` value by which the case must be done (the platform's time
        limit); the segmentation engine plans against it. ``None``: no limit. ``roi``: the case's ROI when
        :meth:`preprocess` already extracted it (used only when the PET has uptake).
        """
        clock = clock or StageClock()
        measurements: Measurements | None = None
        if has_uptake(case):
            # Tasks 2 and 3 use measurements from the segmentation, so it always runs.
            labels, roi = self.segment_case(case, clock, deadline, roi)
            located_by = roi.located_by
            with clock.stage("measure"):
                measurements = measure(labels, case.pet)
            _log_lesion_summary(measurements)
            # Only Tasks 2/3 use radiomics, and only when a model reads one; timed apart, so that the benchmark
            # reports their cost per case.
            if self.manifest.radiomics is not None and self.radiomics_needed and tasks & {2, 3}:
                with clock.stage("radiomics"):
                    measurements = with_radiomics(measurements, labels, case.pet, case.ct, self.manifest.radiomics)
                log.info("radiomics: %d of %d features computed", sum(v is not None for v in
                         measurements.radiomics.values()), len(measurements.radiomics))
            log.info("measurements: %s", {k: round(v, 2) if isinstance(v, float) else v
                                          for k, v in measurements.as_dict().items() if k in _LOGGED_MEASUREMENTS})
        else:
            roi = None  # nothing to segment: the outcome network gets no image inputs
            labels, located_by = image_on_grid(np.zeros(case.ct.GetSize()[::-1], np.uint8), case.ct), "not located"
            log.warning("%s: PET without uptake: empty segmentation, no image measurements", case.pet_path)
        predictions = None
        if tasks & {2, 3}:
            with clock.stage("predict"):
                predictions = predict_tasks_2_3(self.outcome_network, self.clinical_models, case.clinical,
                                                measurements, roi, labels)
            log.info("RFS risk %.4f, HPV probability %.3f -> %s", predictions.rfs_risk,
                     predictions.hpv_probability, "positive" if predictions.hpv_positive else "negative")
        return CaseResult(
            case_id=case.case_id,
            labels=labels if 1 in tasks else None,
            measurements=measurements,
            predictions=predictions,
            roi_located_by=located_by,
            engine=self.engine.name,
            problems=case.problems,
            timings=tuple(clock.timings),
            dicom_series=case.dicom_series,
        )

    def read(self, input_dir: Path, strict: bool = False, clock: StageClock | None = None,
             id_from: Path | None = None) -> Case:
        """Read the case in ``input_dir`` (timed as the stage "read" on ``clock``) and apply the input policy
        (``strict`` refuses any recoverable problem). ``id_from``: a DICOM study's PatientID -> pseudonym table."""
        clock = clock or StageClock()
        with clock.stage("read"):
            case = read_case(input_dir, id_from=id_from)
        apply_input_policy(case.problems, strict)
        return case

    def run(
        self,
        input_dir: Path,
        tasks: frozenset[int] = ALL_TASKS,
        strict: bool = False,
        deadline: float | None = None,
        id_from: Path | None = None,
    ) -> CaseResult:
        """Read the case in ``input_dir`` (:meth:`read`) and compute every requested output before ``deadline``;
        writes nothing."""
        clock = StageClock()
        return self.run_case(self.read(input_dir, strict, clock, id_from), tasks, clock, deadline)


def _log_lesion_summary(measurements: Measurements) -> None:
    """One line per class with the measured SUVmax: the only SUVmax the run log names (the engine's
    peaks are read on the ROI grid and logged as such), so the log and the measurements agree."""
    for name, volume, suv_max in (("GTVp", measurements.gtvp_volume_ml, measurements.gtvp_suvmax),
                                  ("GTVn", measurements.gtvn_volume_ml, measurements.gtvn_suvmax)):
        if suv_max is not None:
            log.info("%s %.2f mL, SUVmax %.2f (PET at the CT voxels of the final mask)", name, volume, suv_max)


def has_uptake(case: Case) -> bool:
    return float(sitk.GetArrayViewFromImage(case.pet).max()) > 0.0  # ``case.pet`` outlives the view
