"""The network-ensemble segmentation engine, backend-agnostic and torch-free.

Every member is loaded (and hash-checked) once when the engine is built, by the backend the manifest
names: :mod:`hecktor.segment.torch_backend.runner` (safetensors) or :mod:`hecktor.segment.onnx_backend`
(ONNX Runtime, numpy only: the ``onnxruntime`` image has no torch). ``segment`` normalises the ROI the
way each member was trained, runs it through the Gaussian sliding window, averages the members' blended
logits and applies one softmax: exactly what nnU-Net's predictor computes for an ensemble of folds
(mirrorings, windows and folds are all averaged in logit space), so that the container reproduces the
figures training validated (``training/``; parity test in ``test/test_training_chain.py``).

Time budget: given a deadline, the engine first times one window of each kind of member (architecture,
patch), twice (the second call counts, so CUDA warm-up does not); a member that runs the ROI in one pass is
priced as that pass (its window's time scaled by the voxels). It prices every member by its own speed and,
only as far as needed to finish in time, drops mirror flips, then lowers the overlap, then drops members from
the end (:func:`plan_inference`). After every member it re-prices the rest from what that member measured
and revises the plan down, or back up for the members not yet run (:func:`revise_plan`). The run log says
what it chose. Without a deadline it runs the manifest's settings as they are.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hecktor.core.cpus import affinity_cpus
from hecktor.core.manifest import CHALLENGE_LABELS, EnsembleConfig
from hecktor.core.types import Probabilities, Roi
from hecktor.preprocess.normalise import normalise_ct, normalise_pet
from hecktor.segment.backend import LoadedMember
from hecktor.segment.windows import (
    WindowSettings,
    mirror_combinations,
    softmax,
    whole_image_shape,
    window_count,
)

__all__ = [
    "MIN_OVERLAP",
    "NETWORK_RESERVE_S",
    "EnsembleEngine",
    "InferencePlan",
    "available_cpus",
    "load_ensemble",
    "member_passes",
    "plan_inference",
    "revise_plan",
]

log = logging.getLogger(__name__)

# Overlaps tried, in order, when the configured one does not fit the time budget. 0 still covers the
# ROI: the last window of every axis is placed flush with its end.
OVERLAP_STEPS = (0.5, 0.25, 0.0)
MIN_OVERLAP = OVERLAP_STEPS[-1]
# Seconds kept back from the deadline for restoring, measuring and writing after the networks.
NETWORK_RESERVE_S = 30.0
# A member dropped by a revision comes back only if the plan fits in this fraction of the time left, so
# that noise in the measured speed does not make the plan flip back and forth.
TAKE_BACK_FRACTION = 0.9


@dataclass(frozen=True)
class InferencePlan:
    """What the ensemble will run: ``members`` first members, at ``overlap``, mirroring ``mirror_axes``."""

    members: int
    overlap: float
    mirror_axes: tuple[int, ...]
    windows: int  # network passes in all (windows x mirrorings per member, one per mirroring for a one-pass member)
    estimated_s: float
    reductions: tuple[str, ...] = ()  # what was given up to fit the budget, for the log
    fits: bool = True


def member_passes(
    shape: Sequence[int], patch: Sequence[int], overlap: float, mirror_axes: Sequence[int], one_pass: bool = False
) -> int:
    """Network passes one member makes: windows x mirrorings, or one per mirroring when it runs the ROI in one pass
    (the overlap is then moot)."""
    mirrors = len(mirror_combinations(mirror_axes))
    return mirrors if one_pass else window_count(shape, patch, overlap) * mirrors


def _per_member(seconds: float | Sequence[float], one_pass: Sequence[bool], n: int) -> tuple[list[float], list[bool]]:
    costs = [float(seconds)] * n if isinstance(seconds, int | float) else [float(s) for s in seconds]
    single = list(one_pass) or [False] * n
    if len(costs) != n or len(single) != n:
        raise ValueError(f"{n} members need {n} costs and one-pass flags, got {len(costs)} and {len(single)}")
    return costs, single


def _plan(
    roi_shape: Sequence[int], patches: Sequence[Sequence[int]], costs: Sequence[float], single: Sequence[bool],
    configured: tuple[int, float, tuple[int, ...]], chosen: tuple[int, float, tuple[int, ...]],
) -> InferencePlan:
    members, step, kept = chosen
    counts = [member_passes(roi_shape, patches[i], step, kept, single[i]) for i in range(members)]
    all_members, overlap, axes = configured
    reductions = tuple(
        text for condition, text in (
            (len(kept) < len(axes), f"mirror axes {axes} -> {kept or 'none'}"),
            (step < overlap, f"overlap {overlap} -> {step}"),
            (members < all_members, f"members {all_members} -> {members}"),
        ) if condition
    )
    estimate = sum(c * s for c, s in zip(counts, costs, strict=False))
    return InferencePlan(members, step, kept, sum(counts), estimate, reductions)


def plan_inference(
    roi_shape: Sequence[int],
    patches: Sequence[Sequence[int]],
    overlap: float,
    mirror_axes: Sequence[int],
    seconds_per_window: float | Sequence[float],
    budget_s: float | None,
    min_members: int = 1,
    one_pass: Sequence[bool] = (),
) -> InferencePlan:
    """The richest settings whose estimated time fits ``budget_s`` (a pure function, tested by hand).

    ``patches`` lists each member's patch size in ensemble order; ``seconds_per_window`` is one figure for all
    or each member's own: seconds per window, or per pass for a member flagged in ``one_pass`` (it runs the
    whole ROI at once, so a lower overlap saves it nothing). Reductions, in order, each only as far as needed:
    mirror axes (TTA is the least accurate use of time), overlap (down the ``OVERLAP_STEPS`` below the
    configured one that save windows), members (dropped from the end, down to ``min_members``). When even that
    minimum does not fit, it is returned with ``fits=False``.
    """
    axes, n = tuple(mirror_axes), len(patches)
    costs, single = _per_member(seconds_per_window, one_pass, n)

    def windows(step: float) -> int:
        return sum(member_passes(roi_shape, p, step, (), s) for p, s in zip(patches, single, strict=True))

    # Lower overlaps only where they save windows (on many ROI sizes 0.25 and 0 tile alike; one pass never).
    overlaps = [overlap]
    for step in (o for o in OVERLAP_STEPS if o < overlap):
        if windows(step) < windows(overlaps[-1]):
            overlaps.append(step)
    candidates = [(n, overlap, axes[:kept]) for kept in range(len(axes), -1, -1)]
    candidates += [(n, step, ()) for step in overlaps[1:]]
    candidates += [(members, overlaps[-1], ()) for members in range(n - 1, min_members - 1, -1)]
    plan = None
    for chosen in candidates:
        plan = _plan(roi_shape, patches, costs, single, (n, overlap, axes), chosen)
        if budget_s is None or plan.estimated_s <= budget_s:
            return plan
    assert plan is not None
    return replace(plan, fits=False)


def _richness(members: int, overlap: float, mirror_axes: Sequence[int]) -> tuple[int, float, int]:
    """Orders plans as :func:`plan_inference` gives things up: members, then overlap, then mirror axes."""
    return members, overlap, len(mirror_axes)


def revise_plan(
    roi_shape: Sequence[int],
    patches: Sequence[Sequence[int]],
    overlap: float,
    mirror_axes: Sequence[int],
    seconds_per_window: float | Sequence[float],
    budget_s: float,
    current: tuple[int, float, tuple[int, ...]],
    one_pass: Sequence[bool] = (),
) -> InferencePlan:
    """The plan for the members not run yet, from their latest costs (a pure function).

    ``patches``, ``seconds_per_window`` and ``one_pass`` describe the members still to come, ``overlap`` and
    ``mirror_axes`` are the manifest's, ``current`` what the run was going to do with them (members, overlap,
    mirror axes). The plan is lowered as soon as ``current`` no longer fits ``budget_s``, and raised again, up to
    every remaining member at the manifest's settings, as soon as a richer plan fits ``TAKE_BACK_FRACTION`` of
    it (a margin, so that noise in the measured speed does not make the plan flip back and forth).
    """
    now = _richness(*current)
    fitting = plan_inference(roi_shape, patches, overlap, mirror_axes, seconds_per_window, budget_s, 0, one_pass)
    if _richness(fitting.members, fitting.overlap, fitting.mirror_axes) < now:
        return fitting
    richer = plan_inference(roi_shape, patches, overlap, mirror_axes, seconds_per_window,
                            budget_s * TAKE_BACK_FRACTION if budget_s > 0 else budget_s, 0, one_pass)
    if _richness(richer.members, richer.overlap, richer.mirror_axes) > now:
        return richer
    costs, single = _per_member(seconds_per_window, one_pass, len(patches))
    return _plan(roi_shape, patches, costs, single, (len(patches), overlap, tuple(mirror_axes)), current)


class EnsembleEngine:
    """Softmax of the mean logits of loaded networks (see :func:`load_ensemble` to load a manifest's)."""

    name = "ensemble"

    def __init__(self, members: Sequence[LoadedMember], trained_on_real_data: bool) -> None:
        if not members:
            raise ValueError("an ensemble needs one member at least")
        self.trained_on_real_data = trained_on_real_data
        self._members = tuple(members)

    @property
    def num_classes(self) -> int:
        return len(CHALLENGE_LABELS)

    def _image(self, roi: Roi, member: LoadedMember, pet: np.ndarray) -> np.ndarray:
        return np.stack([normalise_ct(roi.ct_hu, member.config.ct_normalisation), pet])

    def plan(self, roi: Roi, deadline: float | None) -> InferencePlan:
        """Time one window (or pass) of each kind of member; fit the ensemble into what is left before ``deadline``."""
        return self._schedule(roi, deadline, normalise_pet(roi.pet_suv)).plan

    def _schedule(self, roi: Roi, deadline: float | None, pet: np.ndarray) -> _Schedule:
        shape = roi.ct_hu.shape
        patches = [m.settings.patch_size for m in self._members]
        one_pass = [_runs_in_one_pass(shape, m.settings) for m in self._members]
        keys = [_cost_key(m, single) for m, single in zip(self._members, one_pass, strict=True)]
        first = self._members[0].settings
        if deadline is None:
            plan = plan_inference(shape, patches, first.overlap, first.mirror_axes, 0.0, None, one_pass=one_pass)
            return _Schedule(plan, [0.0] * len(patches), one_pass, keys)
        probed: dict[tuple, float] = {}  # one probe per kind of member: architecture, patch, one pass or windows
        for member, single, key in zip(self._members, one_pass, keys, strict=True):
            if key not in probed:
                seconds = member.runner.seconds_per_window(self._image(roi, member, pet), member.settings)
                # A one-pass member is priced as one pass: its window's time scaled by the voxels of the padded ROI
                # (timing a whole pass twice would cost two members' time); its own run then re-prices it.
                probed[key] = seconds * _pass_voxels(shape, member.settings) if single else seconds
        costs = [probed[key] for key in keys]
        budget = deadline - time.monotonic() - NETWORK_RESERVE_S
        plan = plan_inference(shape, patches, first.overlap, first.mirror_axes, costs, budget, one_pass=one_pass)
        verdict = "fits" if plan.fits else "does NOT fit even at the minimum; running the minimum"
        log.info("ensemble plan: %s on %s, %.0f s left for the networks: %d passes, about %.0f s, %s%s",
                 _describe_costs(costs, one_pass), self._members[0].runner.device, budget, plan.windows,
                 plan.estimated_s, verdict,
                 f" (reduced: {'; '.join(plan.reductions)})" if plan.reductions else " (as configured)")
        if plan.reductions:
            log.warning("ensemble reduced to meet the time limit: %s", "; ".join(plan.reductions))
        return _Schedule(plan, costs, one_pass, keys)

    def segment(self, roi: Roi, deadline: float | None = None) -> Probabilities:
        """Per-class probabilities (K, z, y, x) float32 on ``roi.grid``: softmax of the members' mean logits.

        ``deadline``: ``time.monotonic()`` value by which the whole case must be done; ``None`` runs the
        manifest's settings unchanged. With a deadline the plan is also revised after every member from its
        measured speed (:func:`revise_plan`): lowered when the rest no longer fits (a machine slowed by other
        work must not overrun), raised again for the members not yet run when it fits with room to spare (a
        probe that met a busy moment must not cost the case its members); members are averaged over those that ran.
        """
        _check_roi(roi)
        pet = normalise_pet(roi.pet_suv)
        schedule = self._schedule(roi, deadline, pet)
        shape, first = roi.ct_hu.shape, self._members[0].settings
        probes, measured = list(schedule.costs), dict[tuple, float]()  # per member; per kind of member
        total: np.ndarray | None = None
        overlap, mirror_axes = schedule.plan.overlap, schedule.plan.mirror_axes
        to_run, done = schedule.plan.members, 0
        while done < to_run:
            member, single, key = self._members[done], schedule.one_pass[done], schedule.keys[done]
            start = time.perf_counter()
            logits = member.runner.logits(self._image(roi, member, pet),
                                          replace(member.settings, overlap=overlap, mirror_axes=mirror_axes))
            total = logits if total is None else np.add(total, logits, out=total)
            done += 1
            elapsed = time.perf_counter() - start
            log.info("member %d/%d (%s) done in %.1f s", done, to_run, member.config.name, elapsed)
            if deadline is None or done == len(self._members):
                continue
            # This kind of member now costs what it measured; a kind not run yet keeps its probe, made
            # slower (never faster) by the factor this member ran slower than its own probe.
            measured[key] = elapsed / member_passes(shape, member.settings.patch_size, overlap, mirror_axes, single)
            slowdown = max(1.0, measured[key] / probes[done - 1]) if probes[done - 1] > 0 else 1.0
            costs = [measured.get(k, p * slowdown) for k, p in zip(schedule.keys, probes, strict=True)]
            budget = deadline - time.monotonic() - NETWORK_RESERVE_S
            revised = revise_plan(shape, [m.settings.patch_size for m in self._members[done:]], first.overlap,
                                  first.mirror_axes, costs[done:], budget, (to_run - done, overlap, mirror_axes),
                                  schedule.one_pass[done:])
            if (done + revised.members, revised.overlap, revised.mirror_axes) != (to_run, overlap, mirror_axes):
                log.warning("ensemble re-planned after member %d from its measured %.2f s per %s: %d members "
                            "in all, overlap %s, mirror axes %s", done, measured[key], "pass" if single else "window",
                            done + revised.members, revised.overlap, revised.mirror_axes or "none")
            overlap, mirror_axes, to_run = revised.overlap, revised.mirror_axes, done + revised.members
        assert total is not None  # the manifest schema guarantees one member at least
        total /= np.float32(done)
        return Probabilities(grid=roi.grid, values=np.ascontiguousarray(softmax(total, axis=0)), engine=self.name)


def load_ensemble(
    config: EnsembleConfig, weights_dir: Path, device: str | None = None, num_threads: int | None = None
) -> EnsembleEngine:
    """Load (and hash-check) every member of ``config`` with the backend it names.

    Args:
        config: the manifest's ensemble section (validated by the manifest schema).
        weights_dir: folder holding the member files named in ``config``.
        device: "cpu" or "cuda" to pin where the networks run; default: the GPU when the backend can use
            one, else the CPU (the log says which, in one line, as the members load).
        num_threads: CPU threads for the backend; default: the CPUs this process may use.
    """
    threads = num_threads or available_cpus()
    if config.backend == "onnxruntime":
        from hecktor.segment.onnx_backend import load_onnx_members as load_members
    else:
        from hecktor.segment.torch_backend.runner import load_torch_members as load_members
    members = load_members(config, Path(weights_dir), device, threads)
    return EnsembleEngine(members, trained_on_real_data=bool(config.trained_on_real_data))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask). The cgroup quota (:func:`hecktor.core.cpus.usable_cpus`)
    is not applied yet: adopting it changes thread counts in limited containers, a step of its own."""
    return affinity_cpus()


def _check_roi(roi: Roi) -> None:
    expected = tuple(reversed(roi.grid.GetSize()))
    if roi.ct_hu.shape != expected or roi.pet_suv.shape != expected:
        raise ValueError(
            f"ROI arrays must match the grid (z, y, x) {expected}; got CT {roi.ct_hu.shape}, PET {roi.pet_suv.shape}"
        )


@dataclass(frozen=True)
class _Schedule:
    """A plan with what it was priced from: each member's seconds per window (per pass where ``one_pass``) and
    its kind (members of one kind share their cost)."""

    plan: InferencePlan
    costs: list[float]
    one_pass: list[bool]
    keys: list[tuple]


def _runs_in_one_pass(shape: Sequence[int], settings: WindowSettings) -> bool:
    """Whether the window runner takes the whole ROI in one pass (the test of ``sliding_window_inference``)."""
    return settings.whole_roi_if_fits and (
        math.prod(whole_image_shape(shape, settings.size_multiple)) <= settings.whole_roi_max_voxels)


def _pass_voxels(shape: Sequence[int], settings: WindowSettings) -> float:
    """How many windows' voxels one pass over the padded ROI holds."""
    return math.prod(whole_image_shape(shape, settings.size_multiple)) / math.prod(settings.patch_size)


def _cost_key(member: LoadedMember, one_pass: bool) -> tuple:
    """Members that cost the same per window: the same network shape, patch, runner and way of running."""
    config = member.config
    return (type(member.runner).__name__, member.runner.device, config.architecture,
            json.dumps(config.arch_kwargs, sort_keys=True), member.settings.patch_size, one_pass)


def _describe_costs(costs: Sequence[float], one_pass: Sequence[bool]) -> str:
    parts = []
    for unit, flag in (("window", False), ("pass", True)):
        values = [c for c, s in zip(costs, one_pass, strict=True) if s == flag]
        if values:
            low, high = min(values), max(values)
            parts.append(f"{low:.2f} s per {unit}" if high - low < 0.005 else f"{low:.2f}-{high:.2f} s per {unit}")
    return ", ".join(parts)
