"""The JSON run report (``--report FILE``): what ran, on what, how it ended, and every warning on the way.

It is written for the operator, never into the platform's output folder unless asked to, and also
when a case is refused or fails, so a hospital's batch can tell a refusal from a crash without
parsing logs. Fields: product and library versions, the command's options, the input policy, the
exit code and status, the error message, the case id, engine and ROI method, the recoverable input
problems with the fallback applied, every warning logged, measurements, predictions, per-stage
timings and peak memory, and the files written.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hecktor.core.files import atomic_write
from hecktor.core.version import git_commit, product_version

__all__ = ["RunReport"]

log = logging.getLogger(__name__)

_LIBRARIES = ("numpy", "SimpleITK", "scipy", "connected-components-3d", "pydantic", "torch", "onnxruntime")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "hecktor": product_version(),
                                       "hecktor_git_commit": git_commit()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _WarningCollector(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.levelname}: {record.getMessage()}")


@dataclass
class RunReport:
    """Filled in while one ``run`` goes on; :meth:`write` puts it on disk as JSON."""

    options: dict[str, Any]
    started: str = field(default_factory=_now)
    finished: str | None = None
    exit_code: int | None = None
    status: str = "running"
    error: str | None = None
    case: dict[str, Any] = field(default_factory=dict)
    input_problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @contextmanager
    def collecting_warnings(self) -> Iterator[None]:
        """Every WARNING or worse logged inside the block goes into ``warnings``."""
        handler = _WarningCollector(self.warnings)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)

    def record_case(self, result: Any) -> None:
        """Take what the report needs from a :class:`hecktor.pipeline.CaseResult`."""
        predictions = result.predictions
        self.case = {
            "case_id": result.case_id,
            "engine": result.engine,
            "roi_located_by": result.roi_located_by,
            "measurements": None if result.measurements is None else result.measurements.as_dict(),
            "predictions": None if predictions is None else {
                "rfs_risk": predictions.rfs_risk, "hpv_probability": predictions.hpv_probability,
                "hpv_positive": predictions.hpv_positive},
        }
        self.input_problems = [{"code": p.code, "path": str(p.path), "problem": p.problem, "fallback": p.fallback}
                               for p in result.problems]
        self.timings = [asdict(t) for t in result.timings]

    def finish(self, exit_code: int, status: str, error: str | None = None) -> None:
        self.exit_code, self.status, self.error, self.finished = exit_code, status, error, _now()

    def as_json(self) -> str:
        document = {"report_version": 1, "versions": _versions(), "argv": sys.argv, **asdict(self)}
        return json.dumps(document, indent=2, default=str) + "\n"

    def write(self, path: Path) -> bool:
        """Write the report atomically; a failure is logged, never raised (the run's outcome stands)."""
        try:
            atomic_write(Path(path), lambda tmp: tmp.write_text(self.as_json()))
        except OSError as exc:
            log.error("could not write the run report %s: %s", path, exc.strerror or exc)
            return False
        return True
