"""How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

``os.cpu_count()`` is the host's count; in a container limited with ``--cpus 2`` on a 64-core host it
still says 64, and a runtime that starts 64 threads then spends its time being throttled. The affinity
mask (``taskset``, ``--cpuset-cpus``) and the cgroup quota (``--cpus``: cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) are both honoured; the smaller wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["affinity_cpus", "cgroup_cpu_quota", "usable_cpus"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The folders that may hold this process's CPU limits: its own cgroup's (v2 and v1 cpu) and the root's."""
    dirs = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            dirs.append(root / relative)
        elif "cpu" in controllers.split(","):  # cgroup v1: "N:cpu,cpuacct:/path"
            dirs += [root / controllers / relative, root / "cpu" / relative, root / "cpu,cpuacct" / relative]
    return [*dirs, root, root / "cpu", root / "cpu,cpuacct"]


def cgroup_cpu_quota(root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` for ``--cpus 1.5``), or ``None`` when unlimited."""
    for folder in _own_cgroup_dirs(root, proc_cgroup):
        v2 = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
                return int(quota) / int(period)
            return None
        quota_us, period_us = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota_us is not None and period_us is not None:
            try:
                quota, period = int(quota_us), int(period_us)
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
    return None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask, else ``os.cpu_count()`` (no quota applied)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_cpus(root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may run on: the affinity mask (else ``os.cpu_count()``), capped by the cgroup quota
    rounded up (a 1.5-CPU quota gives 2 threads); at least 1."""
    count = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(count, 1)
