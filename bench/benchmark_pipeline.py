"""Per-stage wall time and peak RSS of the full pipeline on SYNTHETIC cases, one fresh process per case.

Cases (all rendered from the analytic phantom, ``hecktor.io.phantom``):

- ``median``: the median geometry of the HECKTOR 2022 training images
  (``../shared/data/clinical/hecktor2022_image_geometry.csv`` when present; otherwise the median
  recorded below);
- ``large-pet``: a 512 x 512 x 600 whole-body PET (1.37 mm in-plane, 2 mm slices, 700 x 700 x 1200 mm)
  with a median-geometry CT of the head and neck: the brain search must cost what the head costs;
- ``hot-spots``: the median case with 1,400 separate hot spots in the neck: every lesion must cost
  what it covers, not a whole-ROI mask.

Usage::

    python -m bench.benchmark_pipeline [--cases median,large-pet,hot-spots] [--weights-dir model_weights]

Prints one row per stage and case, and each case's peak RSS and total time as ratios of the
``median`` case run in the same invocation, with the radiomics stage's cost per case (present when the
manifest has a ``radiomics`` section); not a test (no pass/fail thresholds).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.io.phantom import SAMPLE_EHR, Phantom, PhantomGeometry, make_phantom, write_platform_case

REPO = Path(__file__).resolve().parent.parent
GEOMETRY_CSV = REPO.parent / "shared" / "data" / "clinical" / "hecktor2022_image_geometry.csv"
# Medians of hecktor2022_image_geometry.csv (524 cases), used when the CSV is absent.
MEDIAN_GEOMETRY = {"ct_size": (512, 512, 135), "ct_spacing": (0.976562, 0.976562, 3.27),
                   "pet_size": (128, 128, 127), "pet_spacing": (4.0, 4.0, 3.27)}
HEAD_TOP_MM = 345.0  # the phantom's head ends below this; real scans start just above the head
HOT_SPOT_SUV = 8.0


def median_geometry_values() -> dict[str, tuple]:
    """Median CT/PET sizes and spacings (x, y, z) of the HECKTOR 2022 training images."""
    if not GEOMETRY_CSV.is_file():
        return dict(MEDIAN_GEOMETRY)
    import pandas as pd

    median = pd.read_csv(GEOMETRY_CSV).median(numeric_only=True)
    return {
        "ct_size": tuple(int(median[f"CTSize{a}"]) for a in "XYZ"),
        "ct_spacing": tuple(float(median[f"CTVox{a}"]) for a in "XYZ"),
        "pet_size": tuple(int(median[f"PTSize{a}"]) for a in "XYZ"),
        "pet_spacing": tuple(float(median[f"PTVox{a}"]) for a in "XYZ"),
    }


def head_on_top(values: dict[str, tuple]) -> PhantomGeometry:
    """A phantom geometry from sizes and spacings, with the head at the top of the field of view, as in real scans."""
    z_bottom = HEAD_TOP_MM - values["ct_size"][2] * values["ct_spacing"][2]
    return PhantomGeometry(**values, z_bottom_mm=z_bottom)


def hecktor_median_geometry() -> PhantomGeometry:
    return head_on_top(median_geometry_values())


def median_case() -> Phantom:
    return make_phantom(hecktor_median_geometry())


def large_pet_case() -> Phantom:
    """A 512 x 512 x 600 whole-body PET beside a head-and-neck CT of the median geometry."""
    pet_geometry = PhantomGeometry(ct_size=(8, 8, 8), pet_size=(512, 512, 600), pet_spacing=(1.37, 1.37, 2.0),
                                   z_bottom_mm=HEAD_TOP_MM - 1200.0)
    head_and_neck = median_case()
    return Phantom(ct=head_and_neck.ct, pet=make_phantom(pet_geometry).pet, labels=head_and_neck.labels)


def hot_spot_case(count: int = 1400) -> Phantom:
    """The median case with ``count`` hot cubes (3 x 3 x 2 PET voxels, SUV 8) on a 20 mm lattice below the brain."""
    phantom = median_case()
    pet = sitk.GetArrayFromImage(phantom.pet)
    lattice = [(x, y, z) for z in np.arange(175.0, 0.0, -13.0) for y in np.arange(-80.0, 101.0, 20.0)
               for x in np.arange(-90.0, 91.0, 20.0)][:count]
    for point in lattice:
        i, j, k = phantom.pet.TransformPhysicalPointToIndex([float(c) for c in point])
        pet[k:k + 2, j:j + 3, i:i + 3] = HOT_SPOT_SUV
    hot = sitk.GetImageFromArray(pet)
    hot.CopyInformation(phantom.pet)
    return Phantom(ct=phantom.ct, pet=hot, labels=phantom.labels)


CASES: dict[str, Callable[[], Phantom]] = {"median": median_case, "large-pet": large_pet_case,
                                           "hot-spots": hot_spot_case}


def _write_case(source: str | PhantomGeometry, case_dir: Path) -> None:
    phantom = CASES[source]() if isinstance(source, str) else make_phantom(source)
    write_platform_case(phantom, case_dir, ehr=SAMPLE_EHR)


def write_case_in_child(source: str | PhantomGeometry, case_dir: Path) -> None:
    """Render and write a case (a name of ``CASES`` or a phantom geometry) in a spawned child, so that the
    measuring processes' peak RSS stays their own."""
    writer = multiprocessing.get_context("spawn").Process(target=_write_case, args=(source, case_dir))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise RuntimeError(f"writing the synthetic case {source!r} failed (exit code {writer.exitcode})")


def _run_case(case_dir: Path, out_dir: Path, weights_dir: Path, report: Path) -> None:
    """Child: load the models, run the case, write its outputs; dump stage timings and peak RSS as JSON."""
    from hecktor.apps.cli import publish_case_result
    from hecktor.core.manifest import load_manifest
    from hecktor.pipeline import ALL_TASKS, Pipeline, peak_rss_mb

    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    pipeline = Pipeline(load_manifest(weights_dir))
    load_s = time.perf_counter() - start
    result = pipeline.run(case_dir)
    start = time.perf_counter()
    publish_case_result(result, out_dir, ALL_TASKS)
    rows = [(t.stage, t.seconds, t.peak_rss_mb) for t in result.timings]
    rows.append(("write", time.perf_counter() - start, peak_rss_mb()))
    report.write_text(json.dumps({"load_s": load_s, "engine": pipeline.engine.name, "rows": rows,
                                  "located_by": result.roi_located_by}))


def measure_case(name: str, weights_dir: Path, tmp: Path) -> dict[str, Any]:
    case_dir, out_dir, report = tmp / name / "input", tmp / name / "output", tmp / name / "report.json"
    write_case_in_child(name, case_dir)
    runner = multiprocessing.get_context("spawn").Process(target=_run_case,
                                                          args=(case_dir, out_dir, weights_dir, report))
    runner.start()
    runner.join()
    if runner.exitcode != 0:
        raise RuntimeError(f"case {name!r} failed (exit code {runner.exitcode})")
    return json.loads(report.read_text())


def _print_case(name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name} (engine {figures['engine']}, ROI {figures['located_by']}, "
          f"model loading {figures['load_s']:.2f} s)")
    print(f"  {'stage':<12}{'seconds':>9}{'peak RSS MB':>13}")
    for stage, seconds, rss in figures["rows"]:
        print(f"  {stage:<12}{seconds:9.2f}{rss:13.0f}")
    print(f"  {'total':<12}{sum(r[1] for r in figures['rows']):9.2f}")


def _radiomics_cell(rows: list) -> str:
    """The radiomics stage's seconds, or why there are none."""
    seconds = [r[1] for r in rows if r[0] == "radiomics"]
    return f"{seconds[0]:.2f}" if seconds else "off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list out of {', '.join(CASES)}")
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    if "median" not in names:
        names.insert(0, "median")  # the reference the ratios are taken against
    geometry = hecktor_median_geometry()
    print(f"SYNTHETIC cases; median geometry: CT {geometry.ct_size} @ {geometry.ct_spacing} mm, "
          f"PET {geometry.pet_size} @ {geometry.pet_spacing} mm")
    with tempfile.TemporaryDirectory() as tmp:
        figures = {name: measure_case(name, args.weights_dir, Path(tmp)) for name in names}
    for name, case_figures in figures.items():
        _print_case(name, case_figures)
    reference = figures["median"]
    ref_peak = max(r[2] for r in reference["rows"])
    ref_total = sum(r[1] for r in reference["rows"])
    print(f"\n{'case':<12}{'peak RSS MB':>13}{'x median':>10}{'total s':>10}{'x median':>10}{'radiomics s':>13}")
    for name, case_figures in figures.items():
        peak = max(r[2] for r in case_figures["rows"])
        total = sum(r[1] for r in case_figures["rows"])
        print(f"{name:<12}{peak:13.0f}{peak / ref_peak:10.2f}{total:10.2f}{total / ref_total:10.2f}"
              f"{_radiomics_cell(case_figures['rows']):>13}")


if __name__ == "__main__":
    main()
