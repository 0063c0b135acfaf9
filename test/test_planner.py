"""The ensemble's time planning, on a fake clock: fake members of given cost, no network, no waiting.

A simulated run goes through :class:`hecktor.segment.ensemble.EnsembleEngine` itself with its clock replaced: each
probe and each member's run advances the clock by the work it stands for (windows x mirrorings x the member's
seconds per window, or one pass per mirroring for a one-pass member), so the finish time is exactly what the plan
would cost on a machine of those speeds. The ROI (48, 50, 49) with 32^3 patches tiles as the sarcoma ROI
(192, 198, 193) with 128^3 patches does: 2 x 3 x 3 = 18 windows at overlap 0.5, 2 x 2 x 2 = 8 at 0.25 and at 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hecktor.core.geometry import make_grid
from hecktor.core.manifest import CHALLENGE_LABELS, MemberConfig
from hecktor.core.types import Roi
from hecktor.segment import ensemble
from hecktor.segment.backend import LoadedMember
from hecktor.segment.ensemble import NETWORK_RESERVE_S, EnsembleEngine, plan_inference, revise_plan
from hecktor.segment.windows import WindowSettings, mirror_combinations, whole_image_shape, window_count

SHAPE = (48, 50, 49)
PATCH = (32, 32, 32)
LIMIT_S = 600.0


class FakeClock:
    """``time.monotonic`` and ``time.perf_counter`` of the engine: seconds of simulated work."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRunner:
    """A member that costs ``window_s`` per window (``pass_s`` per one-pass run) on the fake clock.

    ``probe_s``: what the probe measures instead of the true cost (a probe that met a busy moment); the probe
    takes that long, twice (warm-up, then the timed call), as the real runners' probes do. ``runs`` records
    (overlap, mirrorings, one pass) of every run.
    """

    device = "fake"

    def __init__(self, clock: FakeClock, window_s: float, pass_s: float = 0.0, probe_s: float | None = None) -> None:
        self.clock, self.window_s, self.pass_s, self.probe_s = clock, window_s, pass_s, probe_s
        self.runs: list[tuple[float, int, bool]] = []

    def seconds_per_window(self, image: np.ndarray, settings: WindowSettings) -> float:
        seconds = self.window_s if self.probe_s is None else self.probe_s
        self.clock.advance(2 * seconds)
        return seconds

    def logits(self, image: np.ndarray, settings: WindowSettings) -> np.ndarray:
        shape = image.shape[1:]
        mirrors = len(mirror_combinations(settings.mirror_axes))
        one_pass = (settings.whole_roi_if_fits
                    and math.prod(whole_image_shape(shape, settings.size_multiple)) <= settings.whole_roi_max_voxels)
        windows = 1 if one_pass else window_count(shape, settings.patch_size, settings.overlap)
        self.clock.advance(windows * mirrors * (self.pass_s if one_pass else self.window_s))
        self.runs.append((settings.overlap, mirrors, one_pass))
        return np.zeros((len(CHALLENGE_LABELS), *shape), dtype=np.float32)


def _config(name: str, architecture: str) -> MemberConfig:
    return MemberConfig(name=name, architecture=architecture, arch_kwargs={}, patch_size=PATCH,
                        weights=f"{name}.onnx", sha256="0" * 64,
                        ct_normalisation={"mean": 0.0, "std": 1.0, "lower": -1000.0, "upper": 1000.0},
                        labels=dict(CHALLENGE_LABELS), model_card={})


def _roi() -> Roi:
    grid = make_grid(np.zeros(3), SHAPE[::-1], 1.0, np.eye(3))
    zeros = np.zeros(SHAPE, dtype=np.float32)
    return Roi(grid=grid, ct_hu=zeros, pet_suv=zeros, center_mm=(0.0, 0.0, 0.0), located_by="test",
               midline_x_mm=0.0, midline_from="test")


def simulate(module, monkeypatch, specs, mirror_axes=(), whole_roi=False):
    """Run ``module``'s engine on the fake clock; ``specs``: (architecture, window_s, pass_s, probe_s) per member.

    Returns the finish time (seconds from the start, limit ``LIMIT_S``) and each member's runs."""
    clock = FakeClock()
    monkeypatch.setattr(module, "time", clock)
    settings = WindowSettings(patch_size=PATCH, overlap=0.5, mirror_axes=tuple(mirror_axes),
                              whole_roi_if_fits=whole_roi)
    runners = [FakeRunner(clock, window_s, pass_s, probe_s) for _, window_s, pass_s, probe_s in specs]
    members = [LoadedMember(_config(f"m{i}", arch), runner, settings)
               for i, ((arch, *_), runner) in enumerate(zip(specs, runners, strict=True))]
    module.EnsembleEngine(members, trained_on_real_data=False).segment(_roi(), deadline=LIMIT_S)
    return clock.now, [r.runs for r in runners]


# The review's three cases (issue 16), as member specs.
MIXED = [("STUNet", 1.0, 0.0, None)] * 9 + [("SegResNet", 30.0, 0.0, None)]  # a member of another cost last
SLOW_PROBE = [("STUNet", 1.0, 0.0, 8.0)] * 10  # the probe measures 8 s per window, the windows take 1 s
# One pass over the ROI (64^3 padded, 8 windows' voxels) takes 65 s, its window 7 s: priced 56 s a pass by the probe.
ONE_PASS = [("STUNet", 7.0, 65.0, None)] * 10
TWO_SLOW_PASSES = [("STUNet", 37.5, 300.0, None)] * 2  # two passes of 300 s do not both fit 570 s


def test_members_of_different_cost_finish_in_time(monkeypatch):
    finish, runs = simulate(ensemble, monkeypatch, MIXED)
    assert finish <= LIMIT_S - NETWORK_RESERVE_S
    assert sum(map(len, runs)) >= 9  # the cheap members still run: only what does not fit is given up


def test_a_slow_first_measurement_is_raised_again(monkeypatch):
    finish, runs = simulate(ensemble, monkeypatch, SLOW_PROBE)
    assert finish <= LIMIT_S - NETWORK_RESERVE_S
    # The probe alone plans 8 members at overlap 0.25 (10 x 8 windows x 8 s > 554 s left); the measured 1 s per
    # window after member 1 brings back all ten and the configured overlap.
    pessimistic = plan_inference(SHAPE, [PATCH] * 10, 0.5, (), 8.0, LIMIT_S - NETWORK_RESERVE_S - 16.0)
    assert (pessimistic.members, pessimistic.overlap) == (8, 0.25)
    assert sum(map(len, runs)) == 10
    assert [r[0][0] for r in runs[1:]] == [0.5] * 9


def test_one_pass_members_are_timed_and_priced_as_one_pass(monkeypatch):
    finish, runs = simulate(ensemble, monkeypatch, ONE_PASS, whole_roi=True)
    assert finish <= LIMIT_S - NETWORK_RESERVE_S
    # probe 2 x 7 s; 9 passes priced 56 s fit the 556 s left; after the first the pass costs 65 s: 7 more fit 491 s.
    assert sum(map(len, runs)) == 8 and all(one_pass for member in runs for _, _, one_pass in member)
    finish, runs = simulate(ensemble, monkeypatch, TWO_SLOW_PASSES, whole_roi=True)
    assert finish <= LIMIT_S - NETWORK_RESERVE_S and sum(map(len, runs)) == 1


def test_one_pass_members_give_up_mirrors_then_members_never_overlap(monkeypatch):
    finish, runs = simulate(ensemble, monkeypatch, [("STUNet", 25 / 8, 25.0, None)] * 10, mirror_axes=(0, 1, 2),
                            whole_roi=True)
    assert finish <= LIMIT_S - NETWORK_RESERVE_S
    # probe 6.25 s; 564 s left: 8 mirrorings x 25 s x 10 = 2000 s, 4 x ... = 1000 s, 2 x 25 x 10 = 500 s fits;
    # the time the probe's margin leaves buys the last member two more mirrorings.
    assert [member[0][1] for member in runs] == [2] * 9 + [4]


@pytest.mark.parametrize("specs", [MIXED, SLOW_PROBE], ids=["mixed", "slow-probe"])
def test_a_run_without_deadline_is_as_configured_and_untimed(monkeypatch, specs):
    clock = FakeClock()
    monkeypatch.setattr(ensemble, "time", clock)
    runners = [FakeRunner(clock, w, p, probe) for _, w, p, probe in specs]
    settings = WindowSettings(patch_size=PATCH, overlap=0.5)
    members = [LoadedMember(_config(f"m{i}", arch), r, settings)
               for i, ((arch, *_), r) in enumerate(zip(specs, runners, strict=True))]
    EnsembleEngine(members, trained_on_real_data=False).segment(_roi())
    assert [r.runs for r in runners] == [[(0.5, 1, False)]] * len(specs)


# --------------------------------------------------------------------------- the pure policy


def test_each_member_is_priced_by_its_own_speed():
    plan = plan_inference(SHAPE, [PATCH] * 3, 0.5, (), [1.0, 1.0, 10.0], budget_s=None)
    assert (plan.windows, plan.estimated_s) == (54, 18 * 1.0 * 2 + 18 * 10.0)
    # 216 s as configured; at overlap 0.25 (8 windows each) 96 s fits 100 s.
    plan = plan_inference(SHAPE, [PATCH] * 3, 0.5, (), [1.0, 1.0, 10.0], budget_s=100.0)
    assert (plan.members, plan.overlap, plan.estimated_s) == (3, 0.25, 96.0)


def test_overlap_is_no_saving_for_a_one_pass_member():
    # Two one-pass members of 40 s: lowering the overlap saves nothing, so the plan drops a member.
    plan = plan_inference(SHAPE, [PATCH] * 2, 0.5, (), [40.0, 40.0], budget_s=60.0, one_pass=[True, True])
    assert (plan.members, plan.overlap, plan.windows, plan.estimated_s) == (1, 0.5, 1, 40.0)
    assert plan.reductions == ("members 2 -> 1",)
    # Mixed: only the tiled member's windows shrink with the overlap.
    plan = plan_inference(SHAPE, [PATCH] * 2, 0.5, (), [1.0, 40.0], budget_s=50.0, one_pass=[False, True])
    assert (plan.members, plan.overlap, plan.estimated_s) == (2, 0.25, 48.0)


@pytest.mark.parametrize(
    ("budget", "current", "expected"),
    [
        (1000.0, (4, 0.25, ()), (9, 0.5, ())),  # room: back to the manifest's settings, all members
        (100.0, (9, 0.5, ()), (9, 0.25, ())),  # 162 s does not fit: lowered
        (75.0, (9, 0.25, ()), (9, 0.25, ())),  # 72 s still fits 75 s: kept
        (79.0, (8, 0.25, ()), (8, 0.25, ())),  # 9 x 8 = 72 s fits 79 s but not 90 % of it (71.1 s): not raised
        (90.0, (8, 0.25, ()), (9, 0.25, ())),  # 72 s fits 81 s: taken back
        (-5.0, (3, 0.25, ()), (0, 0.25, ())),  # past the deadline: nothing more
    ],
)
def test_revision_lowers_and_raises_with_a_margin(budget, current, expected):
    plan = revise_plan(SHAPE, [PATCH] * 9, 0.5, (), [1.0] * 9, budget, current)
    assert (plan.members, plan.overlap, plan.mirror_axes) == expected
