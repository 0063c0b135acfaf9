"""``python -m hecktor batch INPUT OUTPUT``: score a cohort, one output folder per patient, resumable.

A radiotherapy department scores a retrospective cohort (1,000 patients) in one command::

    python -m hecktor batch /data/cohort /data/hecktor-out [--tasks 1,2,3] [--strict] [--time-limit S]
    python -m hecktor batch cases.csv out --executor ray --cores-per-worker 4       # many nodes / GPUs

**Inputs** (:mod:`hecktor.io.layouts`): a folder of case folders (platform or training layout, ID = folder
name); a flat folder of ``<ID>__CT.nii.gz`` / ``<ID>__PT.nii.gz`` pairs with optional ``<ID>__ehr.json``; or a
CSV with a ``path`` column (case folders) or ``ct``, ``pet`` [, ``ehr``] columns and an optional ``case_id`` (alias
``PatientID``) column, paths relative to the CSV. IDs are made safe as folder names (with a warning) and must be
unique (a duplicate is an error naming both sources). A folder tree of DICOM files is one case per study
(PatientID + StudyInstanceUID; ID = PatientID, or its pseudonym with ``--id-from``). Each layout is a
:class:`~hecktor.io.layouts.CaseFinder`; this runner only sees :class:`~hecktor.io.layouts.CaseSource`.

**Outputs**: ``OUTPUT/<ID>/`` holds the platform outputs the tasks ask for (same relative paths as on
Grand Challenge), ``qc.png`` (:mod:`hecktor.io.qc`), ``case.json`` (:mod:`hecktor.apps.case_record`) and, with
``--dicom-out``, the DICOM-SEG, RTSTRUCT and (non-DICOM input) CT series under ``dicom/`` (:mod:`hecktor.io.dicom_out`),
all published by one :class:`~hecktor.io.write.StagedOutputs` commit (all or nothing, even on SIGKILL; ``case.json``
is the last file moved into place). ``OUTPUT/summary.csv``, ``OUTPUT/summary.json`` and ``OUTPUT/index.html`` are
rewritten atomically after every case by the driver (the only writer of these files), so a killed run leaves a
usable table.

**Resume**: a case whose ``case.json`` matches the same input contents (sha256), models (fingerprint of the
manifest and Task 2/3 model files) and tasks, and whose listed outputs all exist, is skipped; its summary row comes
from its ``case.json``. A half-done commit of a killed run is first rolled forward (or a staging folder without
commit discarded) by :func:`~hecktor.io.write.recover_stale_staging`, so a restart computes exactly the missing
cases. Hashing reads every input once per run; ``--quick-resume`` reuses the recorded sha256 of a file whose path,
size and mtime are unchanged. A folder whose ``case.json`` names another case is refused (that case fails) unless
``--overwrite``, which also recomputes complete cases.

**Speed**: the models load once per process (one :class:`~hecktor.pipeline.Pipeline`); a reader thread hashes,
reads and preprocesses the next case while the current one is segmented (a queue of one case bounds memory to
three cases: reading, waiting, computing); SimpleITK, numpy and the engines release the GIL. ``--executor ray``
spreads the cases over a Ray cluster: one actor per GPU (or per ``--cores-per-worker`` CPU cores, at most
``--jobs``) loads its Pipeline once and processes cases as actor tasks (a lost actor is restarted and its case
retried); every actor writes its case folders itself, into an OUTPUT every node sees (a shared file system).

**Failures**: a case that fails (input refused, any exception) is logged with its ID and the file, recorded in
the summary with its error and skipped; the others go on. Exit codes: 0 every case ok or already done; 5 some
cases failed (the count is logged and in summary.json); 2 the batch input is unusable (missing, no case, duplicate
or reserved IDs); 3 bad model manifest or weights; 4 the output folder is unusable or another batch holds it;
143/130 stopped by SIGTERM/SIGINT (finished cases stay; the case in flight publishes nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import fcntl
import io
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hecktor.apps.case_record import (
    RECORD_NAME,
    InputFile,
    case_record,
    input_files_of,
    is_complete,
    models_fingerprint,
    read_case_record,
)
from hecktor.core.files import atomic_write
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, load_manifest
from hecktor.core.policy import apply_input_policy
from hecktor.core.types import Case, InputError, Roi
from hecktor.core.version import git_commit, product_version
from hecktor.io.layouts import CaseSource, default_finders, find_cases
from hecktor.io.write import (
    DICOM_DIR,
    STAGING_PREFIX,
    TASK_OUTPUTS,
    OutputError,
    StagedOutputs,
    case_targets,
    recover_stale_staging,
)

if TYPE_CHECKING:
    from hecktor.pipeline import CaseResult, Pipeline, StageClock

__all__ = [
    "EXIT_CASES_FAILED",
    "QC_NAME",
    "SUMMARY_COLUMNS",
    "BatchOptions",
    "CaseOutcome",
    "add_batch_arguments",
    "process_case",
    "run_batch",
    "summary_row",
]

log = logging.getLogger("hecktor.batch")

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's code for a bad command line
EXIT_CASES_FAILED = 5
QC_NAME = Path("qc.png")
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
LOCK_NAME = ".hecktor-batch.lock"
STAGES = ("hash", "read", "preprocess", "segment", "restore", "measure", "radiomics", "predict", "write")
MEASUREMENT_COLUMNS = ("gtvp_volume_ml", "gtvn_volume_ml", "gtvp_suvmax", "gtvp_suvmean", "gtvn_suvmax",
                       "gtvn_suvmean", "tlg", "nlg", "node_count")
PREDICTION_COLUMNS = ("rfs_risk", "hpv_probability", "hpv_positive")
SUMMARY_COLUMNS = ("case_id", "status", "error", "engine", *MEASUREMENT_COLUMNS, *PREDICTION_COLUMNS,
                   *(f"{stage}_s" for stage in STAGES), "peak_rss_mb", "seconds", "origin")
_READER_POLL_S = 0.2


@dataclass(frozen=True)
class BatchOptions:
    """What every case of a run shares (picklable: the Ray executor ships it to its actors)."""

    output_dir: Path
    tasks: frozenset[int]
    strict: bool
    time_limit: float | None
    overwrite: bool
    quick_resume: bool
    models_sha256: str
    run_id: str
    qc: bool = True
    dicom_out: bool = False  # also the DICOM-SEG and RTSTRUCT (hecktor.io.dicom_out)

    @property
    def policy(self) -> str:
        return "strict" if self.strict else "default"


@dataclass(frozen=True)
class CaseOutcome:
    """How one case went in this run. ``record``: its ``case.json`` (ok: just written; skipped: the kept one)."""

    case_id: str
    origin: str
    status: str  # "ok", "failed" or "skipped"
    error: str | None
    seconds: float
    record: Mapping[str, Any] | None = None
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None


@dataclass(frozen=True)
class _Prepared:
    """What the reader hands to the compute loop: a read (and preprocessed) case, or an outcome already known."""

    source: CaseSource
    started: float  # perf_counter when the case's work began
    prepare_s: float = 0.0  # the reader's work on it (time waiting in the queue excluded)
    outcome: CaseOutcome | None = None
    inputs: tuple[InputFile, ...] = ()
    case: Case | None = None
    roi: Roi | None = None
    clock: StageClock | None = None
    hash_s: float = 0.0


# --------------------------------------------------------------------------- one case


def _failed(source: CaseSource, started: float, exc: BaseException, stage_seconds: Mapping[str, float]
            ) -> CaseOutcome:
    if isinstance(exc, (InputError, OutputError)):
        error = str(exc)
        log.error("case %s failed (%s): %s", source.case_id, source.origin, error)
    else:
        error = f"{type(exc).__name__}: {exc}"
        log.error("case %s failed (%s) with an unexpected error: %s", source.case_id, source.origin, error,
                  exc_info=exc)
    return CaseOutcome(source.case_id, source.origin, "failed", error, time.perf_counter() - started,
                       stage_seconds=dict(stage_seconds))


def _already_done(source: CaseSource, options: BatchOptions, inputs: Sequence[InputFile]) -> CaseOutcome | None:
    """A skipped outcome when the case folder holds its complete set; raises when it holds another case's."""
    folder = options.output_dir / source.case_id
    if not folder.is_dir():
        return None
    # A commit a killed run left half done is finished first: that set may be exactly this case's.
    recover_stale_staging(folder)
    record = read_case_record(folder)
    if record is not None and record.get("case_id") != source.case_id and not options.overwrite:
        raise OutputError(folder, f"holds the outputs of case {record.get('case_id')!r} (its case.json); "
                                  "refused without --overwrite")
    if options.overwrite or not is_complete(folder, inputs, options.models_sha256, options.tasks):
        return None
    if _has_dicom_outputs(record) != options.dicom_out:  # asked for now and not there, or there and not asked
        return None
    return CaseOutcome(source.case_id, source.origin, "skipped", None, 0.0, record)


def _has_dicom_outputs(record: Mapping[str, Any] | None) -> bool:
    outputs = record.get("outputs") if record is not None else None
    return isinstance(outputs, list) and any(str(p).startswith(f"{DICOM_DIR.as_posix()}/") for p in outputs)


def prepare_case(source: CaseSource, pipeline: Pipeline, options: BatchOptions) -> _Prepared:
    """Hash the inputs; skip a done case; else read it, apply the input policy and extract its ROI."""
    from hecktor.pipeline import StageClock, has_uptake

    started = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    try:
        previous = ()
        if options.quick_resume:
            record = read_case_record(options.output_dir / source.case_id)
            previous = tuple(record.get("inputs", ())) if record is not None else ()
        inputs = input_files_of(source.input_paths(), previous)
        stage_seconds["hash"] = time.perf_counter() - started
        done = _already_done(source, options, inputs)
        if done is not None:
            return _Prepared(source, started, outcome=replace(done, seconds=time.perf_counter() - started,
                                                     stage_seconds=stage_seconds))
        clock = StageClock()
        with clock.stage("read"):
            case = source.read()
        apply_input_policy(case.problems, options.strict)
        roi = pipeline.preprocess(case, clock) if has_uptake(case) else None
    except Exception as exc:
        return _Prepared(source, started, outcome=_failed(source, started, exc, stage_seconds))
    return _Prepared(source, started, time.perf_counter() - started, None, inputs, case, roi, clock,
                     stage_seconds["hash"])


def _qc_png(case: Case, result: CaseResult, pipeline: Pipeline) -> bytes | None:
    """The QC picture, or None (logged) when it cannot be drawn: a QC failure must not cost the case's outputs."""
    try:
        from hecktor.io.qc import QcInputs, render_qc_png

        return render_qc_png(QcInputs(
            case_id=case.case_id, ct=case.ct, pet=case.pet, labels=result.labels, measurements=result.measurements,
            predictions=result.predictions, engine=result.engine,
            engine_trained_on_real_data=pipeline.engine.trained_on_real_data,
            warnings=tuple(str(p) for p in case.problems)))
    except Exception as exc:
        log.warning("case %s: no QC picture (%s: %s)", case.case_id, type(exc).__name__, exc)
        return None


def finish_case(prepared: _Prepared, pipeline: Pipeline, options: BatchOptions) -> CaseOutcome:
    """Segment and predict a prepared case, then publish its folder in one commit."""
    from hecktor.apps.cli import case_deadline, dicom_output_plan, stage_case_result
    from hecktor.pipeline import peak_rss_mb

    if prepared.outcome is not None:
        return prepared.outcome
    source, case, clock = prepared.source, prepared.case, prepared.clock
    assert case is not None and clock is not None
    stage_seconds = {"hash": prepared.hash_s}
    computing = time.perf_counter()

    def work_s() -> float:  # the case's own time: the reader's share plus this thread's, not its wait in the queue
        return prepared.prepare_s + time.perf_counter() - computing

    try:
        deadline = case_deadline(time.monotonic(), options.tasks, options.time_limit)
        result = pipeline.run_case(case, options.tasks, clock, deadline, prepared.roi)
        stage_seconds.update({t.stage: t.seconds for t in result.timings})
        write_start = time.perf_counter()
        png = _qc_png(case, result, pipeline) if options.qc else None
        dicom = dicom_output_plan(case, result, pipeline) if options.dicom_out else None
        outputs = (case_targets(options.tasks) + ((QC_NAME,) if png is not None else ())
                   + (dicom.paths if dicom is not None else ()))
        run = {"run_id": options.run_id, "created": _now(), "origin": source.origin,
               "seconds": round(work_s(), 3)}
        record = case_record(case_id=source.case_id, inputs=prepared.inputs, models_sha256=options.models_sha256,
                             tasks=options.tasks, policy=options.policy, outputs=outputs, result=result,
                             warnings=[str(p) for p in case.problems], run=run)
        # case.json last: it is moved into place last, so a record on disk always means the whole set is there.
        # The commit replaces the folder's whole previous set (a rerun without --qc, --dicom-out or with fewer
        # tasks leaves nothing of the old run behind).
        with StagedOutputs(options.output_dir / source.case_id, (*outputs, RECORD_NAME),
                           replaces=(*TASK_OUTPUTS.values(), RECORD_NAME, QC_NAME),
                           replaces_folders=(DICOM_DIR,)) as staged:
            stage_case_result(staged, result, options.tasks)
            if png is not None:
                staged.stage_bytes(QC_NAME, png)
            if dicom is not None:
                dicom.stage(staged)
            staged.stage_json(RECORD_NAME, record)
            staged.commit()
        stage_seconds["write"] = time.perf_counter() - write_start
    except Exception as exc:
        return replace(_failed(source, prepared.started, exc, stage_seconds), seconds=work_s())
    return CaseOutcome(source.case_id, source.origin, "ok", None, work_s(), record, stage_seconds, peak_rss_mb())


def process_case(source: CaseSource, pipeline: Pipeline, options: BatchOptions) -> CaseOutcome:
    """One case start to end, in this thread (the Ray actors' unit of work; the local runner overlaps the two)."""
    return finish_case(prepare_case(source, pipeline, options), pipeline, options)


# --------------------------------------------------------------------------- executors


_END = object()


def _reader(sources: Sequence[CaseSource], pipeline: Pipeline, options: BatchOptions, handoff: queue.Queue,
            stop: threading.Event) -> None:
    """Prepare the cases in order and hand them over one at a time (the queue holds one case)."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_READER_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        for source in sources:
            if stop.is_set() or not put(prepare_case(source, pipeline, options)):
                return
    except BaseException as exc:  # handed to the main thread, which raises it: a dead reader must not hang the run
        put(exc)
    finally:
        put(_END)


def run_local(sources: Sequence[CaseSource], pipeline: Pipeline, options: BatchOptions,
              on_outcome: Callable[[CaseOutcome], None], prefetch: bool = True) -> None:
    """Every case in this process; with ``prefetch`` the next case is read and preprocessed in a thread meanwhile."""
    if not prefetch:
        for source in sources:
            on_outcome(process_case(source, pipeline, options))
        return
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(sources, pipeline, options, handoff, stop),
                              name="batch-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = handoff.get(timeout=_READER_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            on_outcome(finish_case(item, pipeline, options))
    finally:
        stop.set()
        reader.join(timeout=5.0)


class _RayCaseWorker:
    """A Ray actor: loads the Pipeline once, then processes cases (the class is wrapped by ``ray.remote``)."""

    def __init__(self, weights_dir: str, options: BatchOptions, verbose: bool) -> None:
        from hecktor.pipeline import Pipeline

        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
        self.options = options
        self.pipeline = Pipeline(load_manifest(Path(weights_dir)))

    def process(self, source: CaseSource) -> CaseOutcome:
        return process_case(source, self.pipeline, self.options)


@dataclass(frozen=True)
class RaySettings:
    address: str | None  # None: start (or join) a local cluster
    jobs: int | None  # at most this many actors
    cores_per_worker: int
    max_retries: int = 2


def ray_worker_count(resources: Mapping[str, float], settings: RaySettings) -> tuple[int, bool]:
    """(actors, one GPU each?): one per GPU when the cluster has GPUs, else one per ``cores_per_worker`` CPUs."""
    gpus = int(resources.get("GPU", 0))
    count = gpus if gpus > 0 else max(1, int(resources.get("CPU", 1)) // settings.cores_per_worker)
    if settings.jobs is not None:
        count = min(count, settings.jobs)
    return max(1, count), gpus > 0


def run_ray(sources: Sequence[CaseSource], weights_dir: Path, options: BatchOptions,
            on_outcome: Callable[[CaseOutcome], None], settings: RaySettings, verbose: bool = False) -> None:
    """The cases as tasks of actors spread over a Ray cluster; outcomes come back to this driver as they end."""
    import ray  # an optional extra (requirements/ray.txt): never imported on the platform path
    from ray.util import ActorPool

    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=True)
    count, per_gpu = ray_worker_count(ray.cluster_resources(), settings)
    worker = ray.remote(num_gpus=1 if per_gpu else 0, num_cpus=0 if per_gpu else settings.cores_per_worker,
                        max_restarts=settings.max_retries, max_task_retries=settings.max_retries)(_RayCaseWorker)
    actors = [worker.remote(str(weights_dir), options, verbose) for _ in range(count)]
    log.info("ray: %d actor(s), one per %s; cluster ready in %.1f s", count,
             "GPU" if per_gpu else f"{settings.cores_per_worker} CPU core(s)", time.perf_counter() - started)
    pool = ActorPool(actors)
    for outcome in pool.map_unordered(lambda actor, source: actor.process.remote(source), list(sources)):
        on_outcome(outcome)
    for actor in actors:
        ray.kill(actor)


# --------------------------------------------------------------------------- summary


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _record_stage_seconds(record: Mapping[str, Any] | None) -> dict[str, float]:
    timings = record.get("timings") if record is not None else None
    return {str(t["stage"]): float(t["seconds"]) for t in timings or () if isinstance(t, Mapping)
            and "stage" in t and "seconds" in t}


def summary_row(outcome: CaseOutcome) -> dict[str, Any]:
    """One summary row: this run's status, error and time; results and stage times from the case's record.

    A skipped case shows the stage times and peak memory of the run that computed it (in its case.json), its
    ``seconds`` and ``hash_s`` those of this run's check.
    """
    record = outcome.record or {}
    measurements = record.get("measurements") or {}
    predictions = record.get("predictions") or {}
    stages = {**_record_stage_seconds(outcome.record), **outcome.stage_seconds}
    peaks = [float(t["peak_rss_mb"]) for t in record.get("timings") or () if isinstance(t, Mapping)
             and isinstance(t.get("peak_rss_mb"), (int, float))]
    peak = outcome.peak_rss_mb if outcome.peak_rss_mb is not None else (max(peaks) if peaks else None)
    row: dict[str, Any] = {"case_id": outcome.case_id, "status": outcome.status, "error": outcome.error,
                           "engine": record.get("engine")}
    row.update({name: measurements.get(name) for name in MEASUREMENT_COLUMNS})
    row.update({name: predictions.get(name) for name in PREDICTION_COLUMNS})
    row.update({f"{stage}_s": _rounded(stages.get(stage)) for stage in STAGES})
    row.update({"peak_rss_mb": _rounded(peak, 1), "seconds": _rounded(outcome.seconds), "origin": outcome.origin})
    return row


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


@dataclass
class _Summary:
    """The driver's table of outcomes, in the sources' order; rewritten atomically after every case."""

    output_dir: Path
    order: Sequence[str]
    metadata: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, CaseOutcome] = field(default_factory=dict)

    def add(self, outcome: CaseOutcome) -> None:
        self.outcomes[outcome.case_id] = outcome
        self.rows[outcome.case_id] = summary_row(outcome)
        self.write()

    def counts(self) -> dict[str, int]:
        statuses = [o.status for o in self.outcomes.values()]
        return {"cases": len(self.order), "done": len(statuses), "ok": statuses.count("ok"),
                "skipped": statuses.count("skipped"), "failed": statuses.count("failed")}

    def write(self, finished: bool = False) -> None:
        rows = [self.rows[case_id] for case_id in self.order if case_id in self.rows]
        document = {**self.metadata, "counts": self.counts(), "finished": _now() if finished else None,
                    "columns": list(SUMMARY_COLUMNS), "cases": rows}
        atomic_write(self.output_dir / SUMMARY_CSV, lambda p: p.write_text(_csv_text(rows), encoding="utf-8"))
        atomic_write(self.output_dir / SUMMARY_JSON,
                     lambda p: p.write_text(json.dumps(document, indent=1, allow_nan=False), encoding="utf-8"))
        self._write_index(rows)

    def _write_index(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            from hecktor.io.html_index import write_index_html
        except ImportError:  # the index page's module is optional: the summary files are the record
            return
        try:
            write_index_html(self.output_dir, rows, list(SUMMARY_COLUMNS))
        except Exception as exc:
            log.warning("could not write %s/index.html (%s: %s)", self.output_dir, type(exc).__name__, exc)


# --------------------------------------------------------------------------- the command


@contextlib.contextmanager
def _batch_lock(output_dir: Path) -> Iterator[None]:
    """Hold OUTPUT for this run: two batch runs on one output folder would both write its summary."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(output_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(output_dir, exc.strerror or str(exc)) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(output_dir, "another batch run is writing this output folder") from None
        # Temporary summary files a killed driver left (atomic_write's names); only the lock holder writes them.
        for stale in output_dir.glob(".summary.*.tmp*"):
            stale.unlink(missing_ok=True)
        for stale in output_dir.glob(".index.*.tmp*"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[CaseOutcome], None]]:
    """A progress bar on stderr (none when stderr is not a terminal) with log lines printed above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, unit="case", file=sys.stderr, disable=None, dynamic_ncols=True) as bar, \
            logging_redirect_tqdm(loggers=[logging.getLogger()]):

        def advance(outcome: CaseOutcome) -> None:
            bar.set_postfix_str(f"{outcome.case_id} {outcome.status} {outcome.seconds:.1f} s", refresh=False)
            bar.update(1)

        yield advance


def run_batch(args: argparse.Namespace) -> int:
    """The ``batch`` command (exit codes in the module docstring); cli's guard maps the whole-batch errors."""
    if args.executor == "local" and args.jobs not in (None, 1):
        log.error("--jobs %d needs --executor ray (ray.init() starts a local cluster without set-up)", args.jobs)
        return EXIT_USAGE
    if args.dicom_out:
        from hecktor.apps.cli import check_dicom_out

        if (problem := check_dicom_out(args.tasks)) is not None:
            log.error("%s", problem)
            return EXIT_USAGE
    started_at, run_id = _now(), uuid.uuid4().hex
    layout, sources = find_cases(args.input, default_finders(args.id_from))
    log.info("batch: %d case(s) in %s (%s layout)", len(sources), args.input, layout)
    output_dir: Path = args.output
    with _batch_lock(output_dir):
        manifest = load_manifest(args.weights_dir)
        options = BatchOptions(output_dir=output_dir, tasks=args.tasks, strict=args.strict,
                               time_limit=args.time_limit, overwrite=args.overwrite, quick_resume=args.quick_resume,
                               models_sha256=models_fingerprint(manifest), run_id=run_id, qc=not args.no_qc,
                               dicom_out=args.dicom_out)
        metadata = {"run_id": run_id, "product_version": product_version(), "git_commit": git_commit(),
                    "models_sha256": options.models_sha256, "weights_dir": str(args.weights_dir),
                    "tasks": sorted(options.tasks), "policy": options.policy, "input": str(args.input),
                    "layout": layout, "output": str(output_dir), "executor": args.executor,
                    "dicom_out": options.dicom_out,
                    "started": started_at}
        summary = _Summary(output_dir, [s.case_id for s in sources], metadata)
        summary.write()
        with _progress(len(sources)) as advance:

            def on_outcome(outcome: CaseOutcome) -> None:
                log.info("case %s: %s in %.1f s%s", outcome.case_id, outcome.status, outcome.seconds,
                         f" ({outcome.error})" if outcome.error else "")
                summary.add(outcome)
                advance(outcome)

            if args.executor == "ray":
                settings = RaySettings(args.ray_address, args.jobs, args.cores_per_worker)
                run_ray(sources, args.weights_dir, options, on_outcome, settings, args.verbose)
            else:
                from hecktor.pipeline import Pipeline

                run_local(sources, Pipeline(manifest), options, on_outcome, prefetch=not args.no_prefetch)
        summary.write(finished=True)
    counts = summary.counts()
    _warn_left_staging(output_dir, sources)
    log.info("batch done: %d ok, %d skipped (already complete), %d failed of %d; summary in %s",
             counts["ok"], counts["skipped"], counts["failed"], counts["cases"], output_dir / SUMMARY_CSV)
    return EXIT_CASES_FAILED if counts["failed"] else EXIT_OK


def _warn_left_staging(output_dir: Path, sources: Sequence[CaseSource]) -> None:
    left = [p for s in sources for p in (output_dir / s.case_id).glob(f"{STAGING_PREFIX}*")]
    if left:
        log.warning("staging folders left (another process is writing?): %s", ", ".join(map(str, left)))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


EPILOG = """\
input layouts (INPUT):
  a folder of case folders   INPUT/<ID>/images/ct/*.mha, images/pet/*.mha [, ehr.json]
                             or INPUT/<ID>/<X>__CT.nii.gz, <X>__PT.nii.gz [, ehr.json]   (case ID = folder name)
  a flat folder of pairs     INPUT/<ID>__CT.nii.gz, INPUT/<ID>__PT.nii.gz [, INPUT/<ID>__ehr.json]
  a CSV list (INPUT.csv)     columns: path (a case folder) or ct, pet [, ehr]; optional case_id (or PatientID);
                             relative paths are relative to the CSV's folder
  DICOM studies              INPUT/**/* (any depth, any names): one case per PatientID + StudyInstanceUID,
                             case ID = PatientID (or its pseudonym: --id-from); CT and attenuation-corrected PET
                             chosen by the README's rules; ehr.json in a patient's own folder is used
  Case IDs become folder names: other characters than A-Z a-z 0-9 . _ - are replaced by _ (logged);
  a duplicate ID is an error naming both sources.

outputs (OUTPUT):
  OUTPUT/<ID>/images/tumor-lymph-node-segmentation/output.mha, rfs.json, hpv-status.json (as --tasks asks),
  qc.png and case.json, published together; OUTPUT/summary.csv, summary.json, index.html after every case.
  With --dicom-out also OUTPUT/<ID>/dicom/seg.dcm and rtstruct.dcm (and dicom/ct/*.dcm for non-DICOM input).
  A rerun skips cases whose case.json matches the same inputs (sha256), models, tasks and --dicom-out choice.

exit codes:
  0  every case ok or already complete         5  some cases failed (the summary says which and why)
  2  unusable batch input (missing, no case, duplicate or reserved IDs)
  3  bad model manifest or weights             4  unusable output folder, or another batch run holds it
  143 / 130  stopped by SIGTERM / SIGINT (finished cases stay complete; the case in flight leaves nothing)
"""


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from hecktor.apps.cli import parse_tasks

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("input", type=Path, help="a folder of case folders, a folder of <ID>__CT/__PT pairs, "
                                                 "a folder of DICOM studies, or a CSV list of cases")
    parser.add_argument("output", type=Path, help="output folder: one folder per case plus the summary")
    parser.add_argument("--tasks", type=parse_tasks, default=frozenset({1, 2, 3}),
                        help="which outputs to write: 'all' (default) or e.g. '1' or '2,3'")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a case with any recoverable input problem (it fails; the others go on)")
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="folder holding manifest.json and the model files")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="wall-clock limit per case the ensemble plans against (default: the platform's; 0: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute every case, also complete ones, and replace folders holding another case")
    parser.add_argument("--quick-resume", action="store_true",
                        help="trust an input file whose path, size and mtime match its case.json entry instead of "
                             "hashing it again (faster resume on slow storage; off: every input is hashed)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: actors on a Ray cluster (pip install -r "
                             "requirements/ray.txt)")
    parser.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                        help="ray: at most N actors (default: one per GPU, else one per --cores-per-worker cores); "
                             "local: must be 1 (one process, reading overlapped with computing)")
    parser.add_argument("--cores-per-worker", type=_positive_int, default=2, metavar="N",
                        help="ray without GPUs: CPU cores per actor (default 2)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="ray: the cluster to join (default: a running local one, else a new local cluster)")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="local: read each case only after the previous one (for measuring; slower)")
    parser.add_argument("--no-qc", action="store_true", help="do not draw qc.png")
    parser.add_argument("--id-from", type=Path, default=None, metavar="CSV",
                        help="DICOM studies: name each case by the pseudonym of its PatientID in this CSV (columns "
                             "PatientID, case_id); a study whose PatientID it lacks fails (default: the PatientID)")
    parser.add_argument("--dicom-out", action="store_true",
                        help="also write each case's DICOM-SEG and RTSTRUCT (dicom/; for non-DICOM input the CT as a "
                             "DICOM series in dicom/ct/); needs Task 1 and requirements/dicom.txt")
    parser.add_argument("-v", "--verbose", action="store_true")

