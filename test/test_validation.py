"""hecktor.core.validation: patient k-fold, centre-out and leave-one-group-out folds, bootstrap intervals; and the
reproducibility of the clinical training script (byte-identical model JSON whatever the BLAS kernel or threads).

Real data (the five HECKTOR 2025 development centres) is read from ../shared/data/clinical; tests that need it
skip when it is absent.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import CLINICAL_DIR, REPO, clinical_training_module

from hecktor.core.validation import (
    BootstrapCI,
    Fold,
    bootstrap_ci,
    bootstrap_distribution,
    centre_out_folds,
    folds_to_nnunet_splits,
    leave_one_group_out,
    patient_kfold,
)

TRAINING_TABLE = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
SUVMAX_TABLE = CLINICAL_DIR / "hecktor2022_suvmax_dev_centers.csv"
RADCURE_TABLE = CLINICAL_DIR / "radcure_clinical_training_split.csv"
# CenterID -> name, as in the challenge's data description (and training/train_clinical_models.py).
CENTRE_NAMES = {1: "CHUM", 2: "CHUP", 3: "CHUS", 4: "CHUV", 5: "MDA", 6: "HGJ", 7: "HMR", 8: "USZ"}


def _ids(n: int) -> list[str]:
    return [f"P{i:04d}" for i in range(n)]


def _assert_partition(folds: list[Fold], ids: list[str]) -> None:
    """Every fold splits all ids into disjoint sorted train/validation; every id is validated exactly once."""
    everyone = sorted(ids)
    validated: list[str] = []
    for fold in folds:
        assert list(fold.train) == sorted(fold.train) and list(fold.validation) == sorted(fold.validation)
        assert not set(fold.train) & set(fold.validation), f"{fold.name}: a patient is in train and validation"
        assert sorted(fold.train + fold.validation) == everyone, f"{fold.name}: train + validation != all ids"
        assert fold.validation, f"{fold.name}: empty validation set"
        validated.extend(fold.validation)
    assert sorted(validated) == everyone, "some patient is validated twice or never"


# --------------------------------------------------------------------------- patient k-fold


@pytest.mark.parametrize("k", [5, 10])
@pytest.mark.parametrize("n", [10, 103, 645])
def test_patient_kfold_partitions_the_patients(k: int, n: int) -> None:
    ids = _ids(n)
    folds = patient_kfold(ids, k, seed=7)
    assert [f.name for f in folds] == [f"fold{i}" for i in range(k)]
    _assert_partition(folds, ids)
    sizes = [len(f.validation) for f in folds]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_patient_kfold_is_deterministic_and_order_free() -> None:
    ids = _ids(120)
    folds = patient_kfold(ids, 5, seed=3)
    assert patient_kfold(ids, 5, seed=3) == folds
    assert patient_kfold(list(reversed(ids)), 5, seed=3) == folds  # input order does not matter
    assert patient_kfold(ids, 5, seed=4) != folds
    assert folds[0].validation != tuple(ids[:24])  # shuffled, not cut in order


def test_patient_kfold_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        patient_kfold(["a", "b", "c", "a"], 2, seed=0)
    with pytest.raises(ValueError, match="at least 6 ids"):
        patient_kfold(_ids(5), 6, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        patient_kfold(_ids(5), 1, seed=0)


# --------------------------------------------------------------------------- centre-out / leave-one-group-out


def _centre_map(sizes: dict[str, int]) -> dict[str, str]:
    return {f"{c}-{i:03d}": c for c, n in sizes.items() for i in range(n)}


def _held_centres(fold: Fold, centre_of: dict[str, str]) -> set[str]:
    return {centre_of[p] for p in fold.validation}


def _assert_centre_disjoint(folds: list[Fold], centre_of: dict[str, str]) -> None:
    _assert_partition(folds, list(centre_of))
    held = [_held_centres(f, centre_of) for f in folds]
    for fold, centres in zip(folds, held, strict=True):
        assert not centres & {centre_of[p] for p in fold.train}, f"{fold.name}: a centre is in train and validation"
        assert fold.name == "centre-out:" + "+".join(sorted(centres))
        # All patients of a held-out centre are validated, none of them trains.
        assert set(fold.validation) == {p for p, c in centre_of.items() if c in centres}
    counted = sorted(c for centres in held for c in centres)
    assert counted == sorted(set(centre_of.values())), "every centre must be held out exactly once"


def test_centre_out_hand_worked_grouping() -> None:
    """Merge the two smallest groups until n_folds remain: worked by hand below."""
    centre_of = _centre_map({"A": 400, "B": 90, "C": 80, "D": 30, "E": 20, "F": 25, "G": 70})
    # 7 groups -> 5: merge E(20)+F(25) = 45, then D(30)+E+F(45) = 75 (a group of three: the documented case).
    folds = centre_out_folds(centre_of, n_folds=5)
    _assert_centre_disjoint(folds, centre_of)
    assert [f.name for f in folds] == [
        "centre-out:A",
        "centre-out:B",
        "centre-out:C",
        "centre-out:D+E+F",
        "centre-out:G",
    ]
    # 6 folds: only E+F merge.
    assert "centre-out:E+F" in [f.name for f in centre_out_folds(centre_of, n_folds=6)]
    # 7 folds = one centre per fold.
    assert [len(_held_centres(f, centre_of)) for f in centre_out_folds(centre_of, n_folds=7)] == [1] * 7


def test_centre_out_ties_are_broken_by_name() -> None:
    centre_of = _centre_map({"Z": 10, "Y": 10, "X": 10, "W": 50})
    folds = centre_out_folds(centre_of, n_folds=3)
    _assert_centre_disjoint(folds, centre_of)
    assert [f.name for f in folds] == ["centre-out:W", "centre-out:X+Y", "centre-out:Z"]
    shuffled = dict(reversed(list(centre_of.items())))
    assert centre_out_folds(shuffled, n_folds=3) == folds


def test_centre_out_refuses_too_few_centres() -> None:
    centre_of = _centre_map({"A": 5, "B": 5, "C": 5})
    with pytest.raises(ValueError, match="at least 5 centres"):
        centre_out_folds(centre_of)
    with pytest.raises(ValueError, match="at least 2"):
        centre_out_folds(centre_of, n_folds=1)


def test_leave_one_group_out() -> None:
    centre_of = _centre_map({"MDA": 40, "CHUS": 7, "HMR": 2})
    folds = leave_one_group_out(centre_of)
    assert [f.name for f in folds] == ["CHUS", "HMR", "MDA"]
    _assert_partition(folds, list(centre_of))
    for fold in folds:
        assert {centre_of[p] for p in fold.validation} == {fold.name}
        assert fold.name not in {centre_of[p] for p in fold.train}
    with pytest.raises(ValueError, match="at least 2 groups"):
        leave_one_group_out({"a": "X", "b": "X"})


def test_nnunet_splits_structure() -> None:
    folds = patient_kfold(_ids(23), 5, seed=1)
    splits = folds_to_nnunet_splits(folds)
    assert json.loads(json.dumps(splits)) == splits
    assert len(splits) == 5
    for split, fold in zip(splits, folds, strict=True):
        assert set(split) == {"train", "val"}
        assert split["train"] == list(fold.train) and split["val"] == list(fold.validation)


def _real_centres() -> dict[str, str]:
    if not TRAINING_TABLE.is_file():
        pytest.skip(f"{TRAINING_TABLE.name} not found in {CLINICAL_DIR} (../shared/data is not mounted)")
    import pandas as pd

    table = pd.read_csv(TRAINING_TABLE)
    return {str(p): CENTRE_NAMES[int(c)] for p, c in zip(table["PatientID"], table["CenterID"], strict=True)}


@pytest.mark.parametrize("n_folds", [3, 4, 5])
def test_centre_out_on_the_real_centres_holds_out_one_large_or_a_pair_of_small(n_folds: int) -> None:
    """Seed 001: each fold holds out one large centre or a pair of smaller centres, all their patients."""
    centre_of = _real_centres()
    sizes = {c: list(centre_of.values()).count(c) for c in set(centre_of.values())}
    assert len(sizes) == 5, sizes  # CHUM, CHUS, HGJ, HMR, MDA
    folds = centre_out_folds(centre_of, n_folds=n_folds)
    assert len(folds) == n_folds
    _assert_centre_disjoint(folds, centre_of)
    held = [sorted(_held_centres(f, centre_of)) for f in folds]
    singles = [g[0] for g in held if len(g) == 1]
    pairs = [g for g in held if len(g) == 2]
    assert len(singles) + len(pairs) == n_folds, f"a fold holds out more than two centres: {held}"
    for pair in pairs:  # a pair is made of centres smaller than any centre held out alone
        assert max(sizes[c] for c in pair) <= min(sizes[c] for c in singles), (pair, sizes)
    assert "MDA" in singles  # the large centre (two thirds of the patients) is never paired
    expected = {
        5: ["centre-out:CHUM", "centre-out:CHUS", "centre-out:HGJ", "centre-out:HMR", "centre-out:MDA"],
        4: ["centre-out:CHUM", "centre-out:CHUS", "centre-out:HGJ+HMR", "centre-out:MDA"],
        3: ["centre-out:CHUM+CHUS", "centre-out:HGJ+HMR", "centre-out:MDA"],
    }
    assert [f.name for f in folds] == expected[n_folds]


# --------------------------------------------------------------------------- bootstrap


def _legacy_bootstrap_ci(stat: Callable[[np.ndarray], float], strata: np.ndarray, n_boot: int, seed: int):
    """The clinical script's interval before it moved to hecktor.core.validation (verbatim), to pin the semantics."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = stat(idx)
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC; nan with one class (as the clinical script's AUC)."""
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_bootstrap_ci_matches_the_legacy_function_exactly() -> None:
    rng = np.random.default_rng(11)
    n = 150
    y = (rng.random(n) < 0.15).astype(float)
    s = rng.normal(size=n) + y
    strata = rng.integers(0, 4, n)
    for st in (None, strata):
        new = bootstrap_ci(_auc, y, s, n_resamples=300, seed=20250, strata=st)
        old = _legacy_bootstrap_ci(
            lambda i: _auc(y[i], s[i]), np.zeros(n) if st is None else st, n_boot=300, seed=20250
        )
        assert new == old


def test_bootstrap_ci_hand_computed_two_points() -> None:
    """x = [0, 1]: a resample mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4. With 2000 resamples the
    2.5th and 97.5th percentiles are 0 and 1, and the 30th and 70th are 0.5 (both far from the 25/75 % steps)."""
    x = np.array([0.0, 1.0])
    assert bootstrap_ci(np.mean, x, n_resamples=2000, seed=5) == (0.0, 1.0)
    assert bootstrap_ci(np.mean, x, n_resamples=2000, seed=5, alpha=0.6) == (0.5, 0.5)


def test_bootstrap_ci_percentiles_and_skipped_resamples_by_hand() -> None:
    """A statistic that ignores the data and counts its calls: the interval is the percentile of 0..N-1."""

    def counter(skip_every: int | None) -> Callable[[np.ndarray], float]:
        calls = iter(range(10**6))

        def stat(_: np.ndarray) -> float:
            i = next(calls)
            return float("nan") if skip_every and i % skip_every == 0 else float(i)

        return stat

    ci = bootstrap_ci(counter(None), np.arange(3.0), n_resamples=2000, seed=0)
    # numpy's linear percentile of 0..1999: position 1999 * 0.025 = 49.975 and 1999 * 0.975 = 1949.025.
    assert ci == pytest.approx((49.975, 1949.025))
    assert isinstance(ci, BootstrapCI) and ci.n_skipped == 0 and ci.n_resamples == 2000

    ci = bootstrap_ci(counter(4), np.arange(3.0), n_resamples=2000, seed=0, alpha=0.1)
    kept = np.array([i for i in range(2000) if i % 4])
    assert ci.n_skipped == 500
    assert ci == pytest.approx(tuple(np.percentile(kept, [5, 95])))

    nan_ci = bootstrap_ci(lambda x: float("nan"), np.arange(3.0), n_resamples=10)
    assert np.isnan(nan_ci.low) and np.isnan(nan_ci.high) and nan_ci.n_skipped == 10


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=300)
    ours = bootstrap_ci(np.mean, x, n_resamples=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(1))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    # Different random draws: the endpoints agree to Monte Carlo error (a few % of the width).
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)
    # And both are close to the normal-theory interval mean +- 1.96 SE.
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ours.low == pytest.approx(x.mean() - 1.96 * se, abs=0.5 * se)
    assert ours.high == pytest.approx(x.mean() + 1.96 * se, abs=0.5 * se)


def test_bootstrap_resamples_rows_jointly_and_within_strata() -> None:
    a = np.arange(50.0)
    # Jointly: the same rows are drawn from both arrays, so they stay equal.
    assert bootstrap_ci(lambda u, v: float(np.all(u == v)), a, a.copy(), n_resamples=200) == (1.0, 1.0)
    # Within strata: the stratum sizes never change; without strata they do.
    strata = np.repeat([0, 1, 2], [10, 15, 25])
    assert bootstrap_ci(lambda s: float(np.sum(s == 0)), strata, n_resamples=300, strata=strata) == (10.0, 10.0)
    low, high = bootstrap_ci(lambda s: float(np.sum(s == 0)), strata, n_resamples=300)
    assert low < 10.0 < high


def test_bootstrap_counts_one_class_resamples() -> None:
    y = np.array([0.0, 1.0, 1.0])
    dist = bootstrap_distribution(_auc, y, np.array([0.1, 0.7, 0.9]), n_resamples=3000, seed=9)
    # A resample of 3 rows has one class with probability (1 + 8) / 27 = 1/3.
    assert dist.n_skipped + len(dist.values) == 3000
    assert dist.n_skipped == pytest.approx(1000, abs=5 * np.sqrt(3000 * (1 / 3) * (2 / 3)))
    assert np.all(dist.values == 1.0)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(0).normal(size=80)
    assert bootstrap_ci(np.median, x, seed=3) == bootstrap_ci(np.median, x, seed=3)
    assert bootstrap_ci(np.median, x, seed=3) != bootstrap_ci(np.median, x, seed=4)


def test_bootstrap_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="first dimension"):
        bootstrap_ci(lambda a, b: 0.0, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.mean, np.zeros(3), alpha=1.5)
    with pytest.raises(ValueError, match="strata"):
        bootstrap_ci(np.mean, np.zeros(3), strata=np.zeros(2))
    with pytest.raises(ValueError, match="at least one array"):
        bootstrap_ci(np.mean)


# --------------------------------------------------------------------------- reproducible clinical training


def _require_clinical_tables() -> None:
    if not (TRAINING_TABLE.is_file() and SUVMAX_TABLE.is_file() and RADCURE_TABLE.is_file()):
        pytest.skip(f"{TRAINING_TABLE.name} / {SUVMAX_TABLE.name} / {RADCURE_TABLE.name} not in {CLINICAL_DIR} "
                    "(../shared/data not mounted)")  # fmt: skip


# Fits the shipped candidates (whatever families they are) and a logistic and a Cox candidate on the real
# cohorts, and prints their model JSON.
_FIT_SNIPPET = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from training import train_clinical_models as t
from training.clinical_cohorts import load_cohorts
from training.clinical_families import Candidate, fit, model_json
data = load_cohorts(t.DEFAULT_TABLE, t.DEFAULT_SUVMAX, t.DEFAULT_RADCURE)
names = [json.load(open(f"{sys.argv[1]}/model_weights/{task}_model.json"))["candidate"] for task in ("rfs", "hpv")]
cands = [c for c in t.RFS_CANDIDATES + t.HPV_CANDIDATES if c.name in names]
cands += [Candidate("logistic", "x", t.FEATURE_SETS["clinical_volumes_suv"], {"C": 1.0}),
          Candidate("cox", "x", t.FEATURE_SETS["clinical_volumes_suv"], {"alpha": 10.0})]
print(json.dumps([model_json(fit(data, c), c.family, {}) for c in cands], indent=2, allow_nan=False))
"""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _blas_variants() -> dict[str, dict[str, str]]:
    """The default run, and runs with other thread counts and, on x86-64, other OpenBLAS kernels
    (OPENBLAS_CORETYPE; other BLAS libraries ignore it) that this CPU can run. The committed hpv_model.json
    once differed in its last digit between an AVX2 (Haswell) and an AVX-512 (SkylakeX) kernel; the
    Sandybridge (AVX) and Haswell kernels also round differently from each other."""
    threads = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    one, four = dict.fromkeys(threads, "1"), dict.fromkeys(threads, "4")
    variants = {"default": {}, "1 thread": one, "4 threads": four}
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags = _cpu_flags()
        if "avx" in flags:
            variants["1 thread"] = {"OPENBLAS_CORETYPE": "Sandybridge", **one}
        if "avx2" in flags:
            variants["4 threads"] = {"OPENBLAS_CORETYPE": "Haswell", **four}
    return variants


def test_clinical_fits_are_byte_identical_across_blas_kernels_and_threads() -> None:
    """Guards the cause of a once non-reproducible hpv_model.json: the last bits of a fit depend on the BLAS kernel
    (CPU) and the solver path. Every variant must print the same model JSON, byte for byte."""
    clinical_training_module()
    _require_clinical_tables()
    procs = {}
    for name, env in _blas_variants().items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _FIT_SNIPPET, str(REPO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, **env},
        )
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        outputs[name] = out
    reference = outputs["default"]
    assert len(json.loads(reference)) == 4
    for name, out in outputs.items():
        assert out == reference, f"model JSON under {name!r} differs from the default run"


def _shipped_candidate(train: object, task: str) -> tuple[dict, object]:
    shipped = json.loads((REPO / "model_weights" / f"{task}_model.json").read_text())
    pool = train.HPV_CANDIDATES if task == "hpv" else train.RFS_CANDIDATES
    matches = [c for c in pool if c.name == shipped["candidate"]]
    assert len(matches) == 1, f"shipped {task} candidate {shipped['candidate']!r} is not in the candidate list"
    return shipped, matches[0]


@pytest.mark.parametrize("task", ["rfs", "hpv"])
def test_refitting_in_process_gives_identical_json_and_the_shipped_parameters(task: str) -> None:
    """Fitting twice gives the same bytes, and the shipped model is this fit (same data, same code)."""
    train = clinical_training_module()
    _require_clinical_tables()
    from training.clinical_cohorts import load_cohorts
    from training.clinical_families import fit, model_json

    data = load_cohorts(TRAINING_TABLE, SUVMAX_TABLE, RADCURE_TABLE)
    shipped, cand = _shipped_candidate(train, task)
    first, second = (json.dumps(model_json(fit(data, cand), task, {})) for _ in range(2))
    assert first == second
    for key, value in json.loads(first).items():
        assert shipped[key] == value, f"shipped {task}_model.json {key} differs from a refit: regenerate it"


def test_stable_float_drops_rounding_noise() -> None:
    clinical_training_module()
    from training.clinical_families import stable_float

    assert stable_float(0.1 + 0.2) == 0.3
    assert stable_float(0.060441360749241405) == stable_float(0.06044136074924136) == 0.06044136075
    assert repr(stable_float(-3e-17)) == "0.0"
    assert stable_float(-2.5e-3) == -0.0025
    with pytest.raises(ValueError, match="non-finite"):
        stable_float(float("nan"))


CLINICAL_FILES = ("rfs_model.json", "hpv_model.json", "clinical_evaluation.json", "MODEL_CARD_clinical.md")


def test_the_shipped_card_is_written_from_the_shipped_files(tmp_path: Path) -> None:
    """`clinical --card-only` on copies of the shipped files rewrites the shipped card byte for byte."""
    clinical_training_module()
    for name in CLINICAL_FILES[:3]:
        (tmp_path / name).write_bytes((REPO / "model_weights" / name).read_bytes())
    from training.train_clinical_models import main

    assert main(["--card-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / CLINICAL_FILES[3]).read_text() == (REPO / "model_weights" / CLINICAL_FILES[3]).read_text()


@pytest.mark.slow
def test_one_command_reproduces_every_shipped_clinical_file(tmp_path: Path) -> None:
    """`python -m training clinical` (about 7 minutes on 2 cores) writes the shipped models, the nested table and
    the model card again, byte for byte."""
    clinical_training_module()
    _require_clinical_tables()
    result = subprocess.run([sys.executable, "-m", "training", "clinical", "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in CLINICAL_FILES:
        assert (tmp_path / name).read_bytes() == (REPO / "model_weights" / name).read_bytes(), name
