"""Command line faces over the pipeline: ``run`` (one case), ``score-table``, ``evaluate``, ``make-sample``,
``export-onnx``.

Exit codes: 0 success, 2 bad input (message names the file and the problem), 3 bad model
manifest or weights, 1 anything unexpected. Nothing is written to the output folder on failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hecktor.manifest import DEFAULT_WEIGHTS_DIR, ManifestError, load_manifest
from hecktor.types import InputError

__all__ = ["inference_main", "main", "parse_tasks"]

log = logging.getLogger("hecktor")

EXIT_INPUT_ERROR = 2
EXIT_MODEL_ERROR = 3


def parse_tasks(text: str) -> frozenset[int]:
    """``"all"`` or a comma list of 1, 2, 3."""
    if text.strip().lower() == "all":
        return frozenset({1, 2, 3})
    try:
        tasks = frozenset(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--tasks must be 'all' or a comma list of 1, 2, 3, got {text!r}") from exc
    if not tasks or not tasks <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"--tasks must be 'all' or a comma list of 1, 2, 3, got {text!r}")
    return tasks


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=Path("/input"), help="case folder (default /input)")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="output folder (default /output)")
    parser.add_argument("--tasks", type=parse_tasks, default=frozenset({1, 2, 3}),
                        help="which outputs to write: 'all' (default) or e.g. '1' or '2,3'")
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="folder holding manifest.json and the model files")
    parser.add_argument("-v", "--verbose", action="store_true")


def _run(args: argparse.Namespace) -> int:
    from hecktor.pipeline import Pipeline, write_outputs

    start = time.perf_counter()
    pipeline = Pipeline(load_manifest(args.weights_dir))
    result = pipeline.run(args.input, args.tasks)
    written = write_outputs(result, args.output, args.tasks)
    for path in written:
        log.info("wrote %s", path)
    log.info("case %s done in %.1f s (engine %s, ROI %s)", result.case_id, time.perf_counter() - start,
             result.engine, result.roi_located_by)
    return 0


def _score_table(args: argparse.Namespace) -> int:
    from hecktor.predict import load_clinical_models
    from hecktor.score_table import score_table

    manifest = load_manifest(args.weights_dir)
    models = load_clinical_models(manifest.rfs_model, manifest.hpv_model)
    score_table(args.in_csv, args.out_csv, models)
    log.info("wrote %s", args.out_csv)
    return 0


def _make_sample(args: argparse.Namespace) -> int:
    from hecktor.phantom import make_phantom, write_platform_case

    write_platform_case(make_phantom(), args.folder)
    log.info("wrote a SYNTHETIC phantom case to %s", args.folder)
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from hecktor.segment.onnx_export import export_manifest_to_onnx

    manifest = export_manifest_to_onnx(args.weights_dir, args.out)
    log.info("wrote %s (backend onnxruntime); use it with --weights-dir %s", manifest, args.out)
    return 0


def _guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return command(args)
    except InputError as exc:
        log.error("input error: %s", exc)
        return EXIT_INPUT_ERROR
    except ManifestError as exc:
        log.error("model error: %s", exc)
        return EXIT_MODEL_ERROR


def build_parser() -> argparse.ArgumentParser:
    from hecktor.evaluate import add_evaluate_arguments, run_evaluate

    parser = argparse.ArgumentParser(prog="python -m hecktor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment one case and predict RFS risk and HPV status")
    _add_run_arguments(run)
    run.set_defaults(func=_run)

    score = sub.add_parser("score-table", help="RFS risk and HPV status for every row of a clinical CSV")
    score.add_argument("in_csv", type=Path)
    score.add_argument("out_csv", type=Path)
    score.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    score.add_argument("-v", "--verbose", action="store_true")
    score.set_defaults(func=_score_table)

    evaluate = sub.add_parser("evaluate", help="Dice, detection F1, C-index and balanced accuracy of predictions")
    add_evaluate_arguments(evaluate)
    evaluate.add_argument("-v", "--verbose", action="store_true")
    evaluate.set_defaults(func=run_evaluate)

    sample = sub.add_parser("make-sample", help="write the SYNTHETIC phantom case in the platform layout")
    sample.add_argument("folder", type=Path)
    sample.add_argument("-v", "--verbose", action="store_true")
    sample.set_defaults(func=_make_sample)

    export = sub.add_parser("export-onnx", help="export every ensemble member to ONNX (onnxruntime backend)")
    export.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="folder holding manifest.json and the torch (safetensors) members")
    export.add_argument("--out", type=Path, required=True,
                        help="new folder for the .onnx members, the model files and the switched manifest.json")
    export.add_argument("-v", "--verbose", action="store_true")
    export.set_defaults(func=_export_onnx)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    return _guarded(args.func, args)


def inference_main(argv: Sequence[str] | None = None) -> int:
    """The container entry point: ``inference.py [--input DIR] [--output DIR] [--tasks ...]``."""
    parser = argparse.ArgumentParser(prog="inference.py", description="HECKTOR 2025 Tasks 1-3 on one case")
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    return _guarded(_run, args)
