"""Command line faces over the pipeline: ``run`` (one case), ``score-table``, ``evaluate``, ``make-sample``,
``export-onnx``.

Exit codes: 0 success, 1 anything unexpected, 2 bad input (message names the file and the problem),
3 bad model manifest or weights, 4 output folder problem (message names the path and the problem),
128 + signal number when stopped by SIGTERM (143) or SIGINT (130). A case's outputs are published
together or not at all (:mod:`hecktor.io.write`): a failed or stopped run writes nothing new.
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

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, Manifest, ManifestError, load_manifest
from hecktor.core.types import InputError
from hecktor.io.write import DICOM_DIR, TASK_OUTPUTS, OutputError, StagedOutputs, case_targets, stage_case_outputs

if TYPE_CHECKING:
    from hecktor.apps.case_record import InputFile
    from hecktor.apps.report import RunReport
    from hecktor.core.types import Case
    from hecktor.io.dicom_out import DicomOutputPlan
    from hecktor.pipeline import CaseResult, Pipeline

__all__ = [
    "Terminated",
    "check_dicom_out",
    "dicom_output_plan",
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

# The platform's situation: the case is mounted at /input and the outputs go to /output. Only there does
# --output have a default, and only there is nothing but the contract's files written (no case.json).
PLATFORM_INPUT = Path("/input")
PLATFORM_OUTPUT = Path("/output")


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
    if not verbose:
        # highdicom logs every module it copies into a DICOM-SEG at INFO (a dozen lines per case).
        logging.getLogger("highdicom").setLevel(logging.WARNING)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=Path("/input"),
                        help="case folder: platform or training layout, or a DICOM study (default /input)")
    parser.add_argument("--output", type=Path, default=None,
                        help="output folder; required, except when the input is /input (the platform's "
                             "situation), where it defaults to /output")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of another case in the output folder (refused otherwise)")
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
    parser.add_argument("--dicom-out", action="store_true",
                        help="also write the segmentation for planning systems: a DICOM-SEG (dicom/seg.dcm) and an "
                             "RTSTRUCT (dicom/rtstruct.dcm) referencing the CT series; for a CT that was not DICOM, "
                             "the CT is written as a DICOM series too (dicom/ct/). Needs Task 1 and "
                             "requirements/dicom.txt")
    parser.add_argument("--id-from", type=Path, default=None, metavar="CSV",
                        help="a DICOM study's case ID: the pseudonym of its PatientID in this CSV (columns PatientID, "
                             "case_id); without it the PatientID is the case ID")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="also write a JSON run report (versions, input problems, warnings, timings, outputs, "
                             "exit status) to FILE, whatever the outcome")
    parser.add_argument("-v", "--verbose", action="store_true")


def is_platform_situation(input_dir: Path) -> bool:
    """Whether ``input_dir`` is the platform's /input (as given, not resolved: a local folder linked to
    /input is still a local run)."""
    return Path(input_dir).absolute() == PLATFORM_INPUT


def check_dicom_out(tasks: frozenset[int]) -> str | None:
    """Why ``--dicom-out`` cannot be honoured (no Task 1, or the DICOM libraries missing); ``None`` when it can."""
    if 1 not in tasks:
        return "--dicom-out writes the Task 1 segmentation: it needs Task 1 among --tasks"
    try:
        import hecktor.io.dicom_out  # noqa: F401 (pydicom and highdicom come with it)
    except ImportError as exc:
        return f"--dicom-out needs pydicom and highdicom: pip install -r requirements/dicom.txt ({exc})"
    return None


def _complete_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Default ``--output`` to /output in the platform's situation; elsewhere it is required. Refuse a
    ``--dicom-out`` that cannot be honoured before any work."""
    if args.dicom_out and (problem := check_dicom_out(args.tasks)) is not None:
        parser.error(problem)
    if args.output is not None:
        return
    if not is_platform_situation(args.input):
        parser.error(f"the following arguments are required: --output (it defaults to {PLATFORM_OUTPUT} only "
                     f"when the input is {PLATFORM_INPUT}, the platform's situation)")
    args.output = PLATFORM_OUTPUT


def _run(args: argparse.Namespace) -> int:
    """One case: compute and publish it; with ``--report``, record how it went whatever the outcome."""
    if args.report is None:
        return _guarded(_compute_and_publish, args)
    from hecktor.apps.report import RunReport

    report = RunReport(options={"input": args.input, "output": args.output, "tasks": sorted(args.tasks),
                                "policy": "strict" if args.strict else "default", "weights_dir": args.weights_dir,
                                "time_limit_s": args.time_limit, "dicom_out": args.dicom_out})
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
    from hecktor.apps.case_record import RECORD_NAME
    from hecktor.pipeline import Pipeline, StageClock

    start = time.perf_counter()
    deadline = case_deadline(time.monotonic(), args.tasks, args.time_limit)
    # Outside the platform every folder says which case it holds (case.json, in the same commit).
    identity = None if is_platform_situation(args.input) else _case_identity(args.input, args.id_from)
    targets = case_targets(args.tasks) + ((RECORD_NAME,) if identity is not None else ())
    check_folder = None if identity is None or args.overwrite else functools.partial(_refuse_other_case, identity)
    # Entered first so that an unusable output folder fails before minutes of loading and computing. The commit
    # replaces every earlier DICOM output too: a run without --dicom-out leaves none of an earlier run's.
    with StagedOutputs(args.output, targets, replaces=(*TASK_OUTPUTS.values(), RECORD_NAME),
                       replaces_folders=(DICOM_DIR,)) as outputs:
        if check_folder is not None:
            check_folder(outputs.output_dir)
        pipeline = Pipeline(load_manifest(args.weights_dir))
        clock = StageClock()
        case = pipeline.read(args.input, args.strict, clock, args.id_from)
        result = pipeline.run_case(case, args.tasks, clock, deadline)
        if report is not None:
            report.record_case(result)
        stage_case_result(outputs, result, args.tasks)
        if args.dicom_out:
            dicom = dicom_output_plan(case, result, pipeline)
            # Before case.json, which stays the last file published (it vouches for the whole set).
            outputs.add_targets(dicom.paths, before=RECORD_NAME if identity is not None else None)
            dicom.stage(outputs)
        if identity is not None:
            outputs.stage_json(RECORD_NAME, _record_of(pipeline.manifest, result, identity, args, outputs.targets,
                                                       report))
        written = _commit(outputs, check_folder)
    _log_written(written)
    if report is not None:
        report.outputs = [str(path) for path in written]
    log.info("case %s done in %.1f s (engine %s, ROI %s)", result.case_id, time.perf_counter() - start,
             result.engine, result.roi_located_by)
    return 0


def _log_written(written: Sequence[Path]) -> None:
    """One line per file, but one per folder for a folder of many (a DICOM CT series is hundreds of files)."""
    per_folder: dict[Path, list[Path]] = {}
    for path in written:
        per_folder.setdefault(path.parent, []).append(path)
    for folder, paths in per_folder.items():
        if len(paths) > 3:
            log.info("wrote %d files in %s (%s ... %s)", len(paths), folder, paths[0].name, paths[-1].name)
        else:
            for path in paths:
                log.info("wrote %s", path)


def _commit(outputs: StagedOutputs, check_folder: Callable[[Path], None] | None) -> list[Path]:
    """Commit; a SIGTERM/SIGINT held during a commit that published the whole set does not fail the run."""
    try:
        return outputs.commit(check_folder)
    except Terminated as exc:
        if not outputs.committed:
            raise
        log.warning("%s came after the outputs were published (the set is complete): finishing normally", exc)
        return outputs.published


def _case_identity(input_dir: Path, id_from: Path | None = None) -> tuple[str, tuple[InputFile, ...]]:
    """The case id and input files (with sha256) the reader will use, found before any model loads (a DICOM
    study: its chosen CT and PET series, each hashed as one input, see :mod:`hecktor.apps.case_record`)."""
    from hecktor.apps.case_record import InputFile, input_files_of
    from hecktor.core.files import sha256_of
    from hecktor.io.read import dicom_study_source, find_case_files, is_dicom_study_folder

    others: tuple[tuple[str, Path | None], ...]
    if is_dicom_study_folder(input_dir):
        study = dicom_study_source(input_dir, id_from)
        case_id, inputs = study.case_id, list(input_files_of({"ct": study.choice.ct.files,
                                                               "pet": study.choice.pet.files}))
        others = (("ehr", study.ehr),)
    else:
        files, _ = find_case_files(input_dir)
        case_id, inputs = files.case_id, []
        others = (("ct", files.ct), ("pet", files.pet), ("ehr", files.ehr))
    for role, path in others:
        # Only regular files are hashed: an ehr.json that is a FIFO or a device must not block or run
        # forever here; the reader reports it under the input policy.
        if path is not None and path.is_file():
            try:
                inputs.append(InputFile(role, str(path), sha256_of(path)))
            except OSError:  # unreadable: the reader refuses it with a proper message
                inputs.append(InputFile(role, str(path), "unreadable"))
    return case_id, tuple(inputs)


def _refuse_other_case(identity: tuple[str, tuple[InputFile, ...]], output_dir: Path) -> None:
    from hecktor.apps.case_record import RECORD_NAME, other_case_in

    held = other_case_in(output_dir, *identity, (*TASK_OUTPUTS.values(), RECORD_NAME, DICOM_DIR))
    if held is not None:
        raise OutputError(output_dir, f"holds the outputs of another case: {held}, not of case {identity[0]!r}; "
                                      "give --overwrite to replace them")


def _record_of(manifest: Manifest, result: CaseResult, identity: tuple[str, tuple[InputFile, ...]],
               args: argparse.Namespace, targets: Sequence[Path], report: RunReport | None) -> dict[str, Any]:
    from hecktor.apps.case_record import case_record, models_fingerprint

    return case_record(case_id=result.case_id, inputs=identity[1], models_sha256=models_fingerprint(manifest),
                       tasks=args.tasks, policy="strict" if args.strict else "default", outputs=targets,
                       result=result, warnings=report.warnings if report is not None else ())


def stage_case_result(outputs: StagedOutputs, result: CaseResult, tasks: frozenset[int]) -> None:
    """Stage the platform outputs of ``result`` that ``tasks`` ask for."""
    predictions = result.predictions
    stage_case_outputs(
        outputs,
        labels=result.labels if 1 in tasks else None,
        rfs_risk=predictions.rfs_risk if predictions is not None and 2 in tasks else None,
        hpv_positive=predictions.hpv_positive if predictions is not None and 3 in tasks else None,
    )


def dicom_output_plan(case: Case, result: CaseResult, pipeline: Pipeline) -> DicomOutputPlan:
    """The DICOM-SEG and RTSTRUCT of ``result``'s segmentation (and the CT series they reference when the case was
    not read from DICOM), planned for staging (:mod:`hecktor.io.dicom_out`)."""
    from hecktor.core.version import product_version
    from hecktor.io.dicom_out import SegmentationSource, plan_dicom_outputs

    if result.labels is None:
        raise ValueError("DICOM outputs need the Task 1 segmentation (run with Task 1)")
    source = SegmentationSource(engine=result.engine, version=product_version(),
                                trained_on_real_data=pipeline.engine.trained_on_real_data)
    return plan_dicom_outputs(case, result.labels, source)


def publish_case_result(result: CaseResult, output_dir: Path, tasks: frozenset[int]) -> list[Path]:
    """Write an already computed ``result``'s outputs all together (benchmarks, batch use); returns the paths."""
    with StagedOutputs(output_dir, case_targets(tasks)) as outputs:
        stage_case_result(outputs, result, tasks)
        return outputs.commit()


def _score_table(args: argparse.Namespace) -> int:
    from hecktor.apps.score_table import score_table
    from hecktor.outcome.predict import load_clinical_models

    manifest = load_manifest(args.weights_dir)
    models = load_clinical_models(manifest.rfs_model, manifest.hpv_model)
    score_table(args.in_csv, args.out_csv, models, strict=args.strict)
    log.info("wrote %s", args.out_csv)
    return 0


def _make_sample(args: argparse.Namespace) -> int:
    from hecktor.io.phantom import make_phantom, write_platform_case

    write_platform_case(make_phantom(), args.folder)
    log.info("wrote a SYNTHETIC phantom case to %s", args.folder)
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from hecktor.segment.torch_backend.onnx_export import export_manifest_to_onnx

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
    from hecktor.apps.evaluate import add_evaluate_arguments, run_evaluate

    parser = argparse.ArgumentParser(prog="python -m hecktor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment one case and predict RFS risk and HPV status")
    _add_run_arguments(run)
    run.set_defaults(func=_run)

    score = sub.add_parser("score-table", help="RFS risk and HPV status for every row of a clinical CSV")
    score.add_argument("in_csv", type=Path)
    score.add_argument("out_csv", type=Path)
    score.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    score.add_argument("--strict", action="store_true",
                       help="refuse (exit 2) a table with unknown columns instead of warning and ignoring them")
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

    from hecktor.apps.batch import add_batch_arguments, run_batch

    batch = sub.add_parser("batch", help="score a cohort: one output folder per case, a summary table; resumable")
    add_batch_arguments(batch)
    batch.set_defaults(func=functools.partial(_guarded, run_batch))

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _complete_run_arguments(parser, args)
    _configure_logging(args.verbose)
    return args.func(args)  # every command maps its known failures to exit codes (see _guarded)


def inference_main(argv: Sequence[str] | None = None) -> int:
    """The container entry point: ``inference.py [--input DIR] [--output DIR] [--tasks ...]`` (``--output`` may be
    left out only when the input is /input, as in the container)."""
    parser = argparse.ArgumentParser(prog="inference.py", description="HECKTOR 2025 Tasks 1-3 on one case")
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    _complete_run_arguments(parser, args)
    _configure_logging(args.verbose)
    return _run(args)
