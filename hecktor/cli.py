"""Command line faces over the pipeline: ``run`` (one case), ``score-table``, ``evaluate``, ``make-sample``,
``export-onnx``.

Exit codes: 0 success, 1 anything unexpected, 2 bad input (message names the file and the problem),
3 bad model manifest or weights, 4 output folder problem (message names the path and the problem),
128 + signal number when stopped by SIGTERM (143) or SIGINT (130). A case's outputs are published
together or not at all (:mod:`hecktor.write`): a failed or stopped run writes nothing new.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from hecktor.manifest import DEFAULT_WEIGHTS_DIR, ManifestError, load_manifest
from hecktor.types import InputError
from hecktor.write import OutputError, StagedOutputs, case_targets, stage_case_outputs

if TYPE_CHECKING:
    from hecktor.pipeline import CaseResult
    from hecktor.report import RunReport

__all__ = [
    "Terminated",
    "inference_main",
    "main",
    "parse_tasks",
    "publish_case_result",
    "signals_as_exceptions",
    "stage_case_result",
]

log = logging.getLogger("hecktor")

EXIT_UNEXPECTED = 1  # an uncaught exception: Python prints the traceback and exits with 1
EXIT_INPUT_ERROR = 2
EXIT_MODEL_ERROR = 3
EXIT_OUTPUT_ERROR = 4


class Terminated(BaseException):
    """SIGTERM or SIGINT, raised in the main thread so ``finally`` blocks and context managers clean up.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in the pipeline does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_as_exceptions(signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Turn ``signums`` into :class:`Terminated` inside the block; the previous handlers come back after."""

    def raise_terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous: dict[int, Any] = {signum: signal.signal(signum, raise_terminated) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


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
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="wall-clock limit for the case; the network ensemble plans to finish within it, "
                             "reducing mirror flips, overlap or members only as far as needed (default: the "
                             "platform's limit for the tasks asked: 600 s for Tasks 1 and 3, 900 s for Task 2; "
                             "0 = no limit)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2) any recoverable input problem instead of applying its documented "
                             "fallback (see the README's input-policy table)")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="also write a JSON run report (versions, input problems, warnings, timings, outputs, "
                             "exit status) to FILE, whatever the outcome")
    parser.add_argument("-v", "--verbose", action="store_true")


def _run(args: argparse.Namespace) -> int:
    """One case: compute and publish it; with ``--report``, record how it went whatever the outcome."""
    if args.report is None:
        return _guarded(_compute_and_publish, args)
    from hecktor.report import RunReport

    report = RunReport(options={"input": args.input, "output": args.output, "tasks": sorted(args.tasks),
                                "policy": "strict" if args.strict else "default", "weights_dir": args.weights_dir,
                                "time_limit_s": args.time_limit})
    with report.collecting_warnings():
        code = _guarded(lambda a: _compute_and_publish(a, report), args, report)
    if report.write(args.report):
        log.info("run report written to %s", args.report)
    return code


# The platform's wall-clock limit per case (organisers' template README), by task.
PLATFORM_TIME_LIMIT_S = {1: 600.0, 2: 900.0, 3: 600.0}


def case_deadline(start: float, tasks: frozenset[int], time_limit: float | None) -> float | None:
    """``time.monotonic()`` deadline of a case started at ``start``: the tightest limit of ``tasks``, or
    ``time_limit`` when given (0 or less: none)."""
    limit = min(PLATFORM_TIME_LIMIT_S[t] for t in tasks) if time_limit is None else time_limit
    return start + limit if limit > 0 else None


def _compute_and_publish(args: argparse.Namespace, report: RunReport | None = None) -> int:
    from hecktor.pipeline import Pipeline

    start = time.perf_counter()
    deadline = case_deadline(time.monotonic(), args.tasks, args.time_limit)
    # Entered first so that an unusable output folder fails before minutes of loading and computing.
    with StagedOutputs(args.output, case_targets(args.tasks)) as outputs:
        pipeline = Pipeline(load_manifest(args.weights_dir))
        result = pipeline.run(args.input, args.tasks, strict=args.strict, deadline=deadline)
        if report is not None:
            report.record_case(result)
        stage_case_result(outputs, result, args.tasks)
        written = outputs.commit()
    for path in written:
        log.info("wrote %s", path)
    if report is not None:
        report.outputs = [str(path) for path in written]
    log.info("case %s done in %.1f s (engine %s, ROI %s)", result.case_id, time.perf_counter() - start,
             result.engine, result.roi_located_by)
    return 0


def stage_case_result(outputs: StagedOutputs, result: CaseResult, tasks: frozenset[int]) -> None:
    """Stage the platform outputs of ``result`` that ``tasks`` ask for."""
    predictions = result.predictions
    stage_case_outputs(
        outputs,
        labels=result.labels if 1 in tasks else None,
        rfs_risk=predictions.rfs_risk if predictions is not None and 2 in tasks else None,
        hpv_positive=predictions.hpv_positive if predictions is not None and 3 in tasks else None,
    )


def publish_case_result(result: CaseResult, output_dir: Path, tasks: frozenset[int]) -> list[Path]:
    """Write an already computed ``result``'s outputs all together (benchmarks, batch use); returns the paths."""
    with StagedOutputs(output_dir, case_targets(tasks)) as outputs:
        stage_case_result(outputs, result, tasks)
        return outputs.commit()


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

    manifest = export_manifest_to_onnx(args.weights_dir, args.out, fp16_weights=args.fp16_weights)
    log.info("wrote %s (backend onnxruntime); use it with --weights-dir %s", manifest, args.out)
    return 0


# Known failures: exception type -> (exit code, status word, log prefix).
_KNOWN_FAILURES: tuple[tuple[type[Exception], int, str], ...] = (
    (InputError, EXIT_INPUT_ERROR, "input error"),
    (ManifestError, EXIT_MODEL_ERROR, "model error"),
    (OutputError, EXIT_OUTPUT_ERROR, "output error"),
)


def _guarded(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace, report: RunReport | None = None
) -> int:
    """Run ``command``; known failures become one log line and an exit code instead of a traceback.

    ``report`` (when given) records the outcome, unexpected failures included, which still propagate.
    """
    try:
        with signals_as_exceptions():
            code = command(args)
    except Terminated as exc:
        log.error("terminated by %s: stopping with exit code %d, no partial outputs", exc, exc.exit_code)
        _finish(report, exc.exit_code, "terminated", str(exc))
        return exc.exit_code
    except Exception as exc:
        for kind, exit_code, prefix in _KNOWN_FAILURES:
            if isinstance(exc, kind):
                log.error("%s: %s", prefix, exc)
                _finish(report, exit_code, prefix.replace(" ", "-"), str(exc))
                return exit_code
        _finish(report, EXIT_UNEXPECTED, "internal-error", f"{type(exc).__name__}: {exc}")
        raise
    _finish(report, code, "ok" if code == 0 else "failed")
    return code


def _finish(report: RunReport | None, exit_code: int, status: str, error: str | None = None) -> None:
    if report is not None:
        report.finish(exit_code, status, error)


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
    score.set_defaults(func=functools.partial(_guarded, _score_table))

    evaluate = sub.add_parser("evaluate", help="Dice, detection F1, C-index and balanced accuracy of predictions")
    add_evaluate_arguments(evaluate)
    evaluate.add_argument("-v", "--verbose", action="store_true")
    evaluate.set_defaults(func=functools.partial(_guarded, run_evaluate))

    sample = sub.add_parser("make-sample", help="write the SYNTHETIC phantom case in the platform layout")
    sample.add_argument("folder", type=Path)
    sample.add_argument("-v", "--verbose", action="store_true")
    sample.set_defaults(func=functools.partial(_guarded, _make_sample))

    export = sub.add_parser("export-onnx", help="export every ensemble member to ONNX (onnxruntime backend)")
    export.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="folder holding manifest.json and the torch (safetensors) members")
    export.add_argument("--out", type=Path, required=True,
                        help="new folder for the .onnx members, the model files and the switched manifest.json")
    export.add_argument("--fp16-weights", action="store_true",
                        help="store the weights as float16 (computed in float32): half the size, for the image's "
                             "2 GB upload limit")
    export.add_argument("-v", "--verbose", action="store_true")
    export.set_defaults(func=functools.partial(_guarded, _export_onnx))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    return args.func(args)  # every command maps its known failures to exit codes (see _guarded)


def inference_main(argv: Sequence[str] | None = None) -> int:
    """The container entry point: ``inference.py [--input DIR] [--output DIR] [--tasks ...]``."""
    parser = argparse.ArgumentParser(prog="inference.py", description="HECKTOR 2025 Tasks 1-3 on one case")
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    return _run(args)
