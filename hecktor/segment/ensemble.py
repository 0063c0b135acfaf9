"""The network-ensemble segmentation engine, backend-agnostic and torch-free.

Every member is loaded (and hash-checked) once when the engine is built, by the backend the manifest
names: :mod:`hecktor.segment.torch_backend.runner` (safetensors) or :mod:`hecktor.segment.onnx_backend`
(ONNX Runtime, numpy only: the ``onnxruntime`` image has no torch). ``segment`` normalises the ROI the
way each member was trained, runs it through the Gaussian sliding window, averages the members' blended
logits and applies one softmax: exactly what nnU-Net's predictor computes for an ensemble of folds
(mirrorings, windows and folds are all averaged in logit space), so that the container reproduces the
figures training validated (``training/``; parity test in ``test/test_training_chain.py``).

Time budget: given a deadline, the engine first times one window of the first member (twice; the
second call counts, so CUDA warm-up does not), estimates the whole ensemble's cost and, only as far
as needed to finish in time, drops mirror flips, then lowers the overlap, then drops members from the
end (:func:`plan_inference`). The run log says what it chose. Without a deadline it runs the manifest's
settings as they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hecktor.core.manifest import CHALLENGE_LABELS, EnsembleConfig
from hecktor.core.types import Probabilities, Roi
from hecktor.preprocess.normalise import normalise_ct, normalise_pet
from hecktor.segment.backend import LoadedMember
from hecktor.segment.windows import mirror_combinations, softmax, window_count

__all__ = [
    "MIN_OVERLAP",
    "NETWORK_RESERVE_S",
    "EnsembleEngine",
    "InferencePlan",
    "available_cpus",
    "load_ensemble",
    "plan_inference",
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
    windows: int  # network passes in all (windows x mirrorings x members)
    estimated_s: float
    reductions: tuple[str, ...] = ()  # what was given up to fit the budget, for the log
    fits: bool = True


def _passes(shape: Sequence[int], patches: Sequence[Sequence[int]], overlap: float, mirror_axes: Sequence[int]) -> int:
    mirrors = len(mirror_combinations(mirror_axes))
    return sum(window_count(shape, patch, overlap) * mirrors for patch in patches)


def plan_inference(
    roi_shape: Sequence[int],
    patches: Sequence[Sequence[int]],
    overlap: float,
    mirror_axes: Sequence[int],
    seconds_per_window: float,
    budget_s: float | None,
    min_members: int = 1,
) -> InferencePlan:
    """The richest settings whose estimated time fits ``budget_s`` (a pure function, tested by hand).

    ``patches`` lists each member's patch size in ensemble order. Reductions, in order, each only as
    far as needed: mirror axes (TTA is the least accurate use of time), overlap (down the
    ``OVERLAP_STEPS`` below the configured one that save windows), members (dropped from the end, down
    to ``min_members``). When even that minimum does not fit, it is returned with ``fits=False``.
    """
    axes = tuple(mirror_axes)
    # Lower overlaps only where they save windows (on many ROI sizes 0.25 and 0 tile alike).
    overlaps = [overlap]
    for step in (o for o in OVERLAP_STEPS if o < overlap):
        if _passes(roi_shape, patches, step, ()) < _passes(roi_shape, patches, overlaps[-1], ()):
            overlaps.append(step)
    candidates = [(len(patches), overlap, axes[:kept]) for kept in range(len(axes), -1, -1)]
    candidates += [(len(patches), step, ()) for step in overlaps[1:]]
    candidates += [(members, overlaps[-1], ()) for members in range(len(patches) - 1, min_members - 1, -1)]
    plan = None
    for members, step, kept in candidates:
        passes = _passes(roi_shape, patches[:members], step, kept)
        estimate = passes * seconds_per_window
        reductions = tuple(
            text for condition, text in (
                (len(kept) < len(axes), f"mirror axes {axes} -> {kept or 'none'}"),
                (step < overlap, f"overlap {overlap} -> {step}"),
                (members < len(patches), f"members {len(patches)} -> {members}"),
            ) if condition
        )
        plan = InferencePlan(members, step, kept, passes, estimate, reductions)
        if budget_s is None or estimate <= budget_s:
            return plan
    assert plan is not None
    return replace(plan, fits=False)


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
        """Time one window of the first member and fit the ensemble into what is left before ``deadline``."""
        patches = [m.settings.patch_size for m in self._members]
        first = self._members[0]
        configured = (roi.ct_hu.shape, patches, first.settings.overlap, first.settings.mirror_axes)
        if deadline is None or any(m.settings.whole_roi_if_fits for m in self._members):
            return plan_inference(*configured, seconds_per_window=0.0, budget_s=None)
        seconds = first.runner.seconds_per_window(self._image(roi, first, normalise_pet(roi.pet_suv)), first.settings)
        budget = deadline - time.monotonic() - NETWORK_RESERVE_S
        plan = plan_inference(*configured, seconds_per_window=seconds, budget_s=budget)
        verdict = "fits" if plan.fits else "does NOT fit even at the minimum; running the minimum"
        log.info("ensemble plan: %.2f s per window on %s, %.0f s left for the networks: %d passes, about %.0f s, %s%s",
                 seconds, first.runner.device, budget, plan.windows, plan.estimated_s, verdict,
                 f" (reduced: {'; '.join(plan.reductions)})" if plan.reductions else " (as configured)")
        if plan.reductions:
            log.warning("ensemble reduced to meet the time limit: %s", "; ".join(plan.reductions))
        return plan

    def segment(self, roi: Roi, deadline: float | None = None) -> Probabilities:
        """Per-class probabilities (K, z, y, x) float32 on ``roi.grid``: softmax of the members' mean logits.

        ``deadline``: ``time.monotonic()`` value by which the whole case must be done; ``None`` runs the
        manifest's settings unchanged. With a deadline the plan is also revised after every member from
        its measured speed (a machine slowed by other work must not overrun), dropping further overlap
        or members only as far as needed; members are averaged over those that ran.
        """
        _check_roi(roi)
        plan = self.plan(roi, deadline)
        pet = normalise_pet(roi.pet_suv)
        total: np.ndarray | None = None
        pool = self._members[: plan.members]  # a revision may drop members of the plan, or take them back
        overlap, mirror_axes, to_run, done = plan.overlap, plan.mirror_axes, plan.members, 0
        while done < to_run:
            member = pool[done]
            start = time.perf_counter()
            logits = member.runner.logits(self._image(roi, member, pet),
                                          replace(member.settings, overlap=overlap, mirror_axes=mirror_axes))
            total = logits if total is None else np.add(total, logits, out=total)
            done += 1
            elapsed = time.perf_counter() - start
            log.info("member %d/%d (%s) done in %.1f s", done, to_run, member.config.name, elapsed)
            if deadline is not None and done < len(pool):
                per_window = elapsed / _passes(roi.ct_hu.shape, [member.settings.patch_size], overlap, mirror_axes)
                budget = deadline - time.monotonic() - NETWORK_RESERVE_S
                remaining = [m.settings.patch_size for m in pool[done:]]
                revised = plan_inference(roi.ct_hu.shape, remaining, overlap, mirror_axes, per_window, budget,
                                         min_members=0)
                if done + revised.members > to_run:  # take a dropped member back only with room to spare
                    revised = plan_inference(roi.ct_hu.shape, remaining, overlap, mirror_axes, per_window,
                                             budget * TAKE_BACK_FRACTION, min_members=to_run - done)
                if (done + revised.members, revised.overlap, revised.mirror_axes) != (to_run, overlap, mirror_axes):
                    log.warning("ensemble re-planned after member %d from its measured %.2f s per window: %d members "
                                "in all, overlap %s, mirror axes %s", done, per_window, done + revised.members,
                                revised.overlap, revised.mirror_axes or "none")
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
    """CPUs this process may run on: the affinity mask where the OS has one, else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_roi(roi: Roi) -> None:
    expected = tuple(reversed(roi.grid.GetSize()))
    if roi.ct_hu.shape != expected or roi.pet_suv.shape != expected:
        raise ValueError(
            f"ROI arrays must match the grid (z, y, x) {expected}; got CT {roi.ct_hu.shape}, PET {roi.pet_suv.shape}"
        )
