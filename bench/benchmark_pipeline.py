"""Per-stage wall time and peak RSS of the full pipeline on a HECKTOR-sized SYNTHETIC case.

The case geometry is the median of the HECKTOR 2022 training images
(``../shared/data/clinical/hecktor2022_image_geometry.csv`` when present; otherwise the
median recorded below). Usage::

    python -m bench.benchmark_pipeline [--weights-dir model_weights] [--repeats 2]

Prints one row per stage and the total; not a test (no pass/fail thresholds).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path

from hecktor.manifest import DEFAULT_WEIGHTS_DIR, load_manifest
from hecktor.phantom import PhantomGeometry, make_phantom, write_platform_case
from hecktor.pipeline import Pipeline, peak_rss_mb, write_outputs

REPO = Path(__file__).resolve().parent.parent
GEOMETRY_CSV = REPO.parent / "shared" / "data" / "clinical" / "hecktor2022_image_geometry.csv"
# Medians of hecktor2022_image_geometry.csv (524 cases), used when the CSV is absent.
MEDIAN_GEOMETRY = {"ct_size": (512, 512, 135), "ct_spacing": (0.976562, 0.976562, 3.27),
                   "pet_size": (128, 128, 127), "pet_spacing": (4.0, 4.0, 3.27)}


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
    z_bottom = 345.0 - values["ct_size"][2] * values["ct_spacing"][2]
    return PhantomGeometry(**values, z_bottom_mm=z_bottom)


def hecktor_median_geometry() -> PhantomGeometry:
    return head_on_top(median_geometry_values())


def _write_case(geometry: PhantomGeometry, case_dir: Path) -> None:
    write_platform_case(make_phantom(geometry), case_dir)


def write_case_in_child(geometry: PhantomGeometry, case_dir: Path) -> None:
    """Render and write the phantom case in a spawned child, so that the caller's peak RSS stays its own."""
    writer = multiprocessing.get_context("spawn").Process(target=_write_case, args=(geometry, case_dir))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise RuntimeError(f"writing the synthetic case failed (exit code {writer.exitcode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--repeats", type=int, default=2, help="cases run with the same loaded models")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    geometry = hecktor_median_geometry()
    print(f"SYNTHETIC case: CT {geometry.ct_size} @ {geometry.ct_spacing} mm, "
          f"PET {geometry.pet_size} @ {geometry.pet_spacing} mm")
    with tempfile.TemporaryDirectory() as tmp:
        case_dir, out_dir = Path(tmp) / "input", Path(tmp) / "output"
        # In a child process, so that the peak RSS printed below is the pipeline's alone.
        write_case_in_child(geometry, case_dir)
        start = time.perf_counter()
        pipeline = Pipeline(load_manifest(args.weights_dir))
        print(f"model loading: {time.perf_counter() - start:.2f} s, engine {pipeline.engine.name}")
        for repeat in range(args.repeats):
            result = pipeline.run(case_dir)
            start = time.perf_counter()
            write_outputs(result, out_dir)
            write_s = time.perf_counter() - start
            print(f"\nrun {repeat + 1}:")
            print(f"  {'stage':<12}{'seconds':>9}{'peak RSS MB':>13}")
            for timing in result.timings:
                print(f"  {timing.stage:<12}{timing.seconds:9.2f}{timing.peak_rss_mb:13.0f}")
            print(f"  {'write':<12}{write_s:9.2f}{peak_rss_mb():13.0f}")
            total = sum(t.seconds for t in result.timings) + write_s
            pre_post = sum(t.seconds for t in result.timings if t.stage in ("preprocess", "restore")) + write_s
            print(f"  {'total':<12}{total:9.2f}")
            print(f"  preprocess + restore + write = {pre_post:.2f} s")


if __name__ == "__main__":
    main()
