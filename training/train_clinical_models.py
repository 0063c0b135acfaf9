"""Train the Task 2 (RFS) and Task 3 (HPV) models on the HECKTOR development centres plus RADCURE, and judge
them only on centres and cohorts they never saw.

One command reproduces everything: the nested centre- and cohort-disjoint table of every model family
(:mod:`training.clinical_evaluation`), the final selection on all patients, the shipped model files and the
model card written from that table::

    python -m training clinical            # or: python training/train_clinical_models.py --out model_weights/

Inputs are only what a case provides at run time (:func:`hecktor.outcome.predict.raw_features`): the ``ehr.json``
keys (age, gender, tobacco, performance status, treatment, M-stage) and the image measurements (reference-mask
volumes and the 2022 SUVmax table in training; the product's segmentation at run time). Not used: CenterID
(validation groups only), HPV status (not an input of the 2025 container; RFS may use the PREDICTED HPV
probability), alcohol (recorded by one HECKTOR centre only, so no held-out centre could test it).

Outputs (``--out``): ``rfs_model.json``, ``hpv_model.json`` (read by :mod:`hecktor.outcome.predict`),
``clinical_evaluation.json`` (the whole nested table) and ``MODEL_CARD_clinical.md``. Written atomically, and
byte-identical on every run and machine (fixed seeds, parameters rounded by ``stable_float``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow `python training/train_clinical_models.py` without installing
    sys.path.insert(0, str(REPO))

from hecktor.core.files import atomic_write, sha256_of  # noqa: E402
from hecktor.measure.radiomics import FEATURE_NAMES as RADIOMICS_FEATURES  # noqa: E402
from training.clinical_card import model_card  # noqa: E402
from training.clinical_cohorts import Cohorts, load_cohorts  # noqa: E402
from training.clinical_evaluation import (  # noqa: E402
    N_BOOT,
    SEED,
    evaluate_task,
    pooled_name,
    report,
    select,
)
from training.clinical_families import Candidate, fit, model_json  # noqa: E402
from training.workspace import write_json  # noqa: E402

logger = logging.getLogger("train_clinical_models")

CLINICAL_DIR = REPO.parent / "shared/data/clinical"
DEFAULT_TABLE = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
DEFAULT_SUVMAX = CLINICAL_DIR / "hecktor2022_suvmax_dev_centers.csv"
DEFAULT_RADCURE = CLINICAL_DIR / "radcure_clinical_training_split.csv"
DEFAULT_OUT = REPO / "model_weights"

_CLINICAL = ("age", "gender_male", "tobacco", "performance_status", "treatment_chemoradiotherapy", "m_stage")
_VOLUMES = ("log_gtvp_volume", "log_gtvn_volume")
_SUV = ("log_gtvp_suvmax", "log_gtvn_suvmax")
# Candidate feature sets and settings, fixed before looking at any result.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "clinical": _CLINICAL,
    "clinical_volumes": _CLINICAL + _VOLUMES,
    "clinical_volumes_suv": _CLINICAL + _VOLUMES + _SUV,
}


def _cands(family: str, sets: Sequence[str], key: str, values: Sequence[float | int]) -> list[Candidate]:
    return [Candidate(family, s, FEATURE_SETS[s], {key: v}) for s in sets for v in values]


ALL_SETS = tuple(FEATURE_SETS)
IMAGE_SETS = ("clinical_volumes", "clinical_volumes_suv")
HPV_CANDIDATES = [
    *_cands("logistic", ALL_SETS, "C", (0.01, 0.1, 1.0)),
    *_cands("hist_gradient_boosting", IMAGE_SETS, "iterations", (100,)),
    *_cands("random_forest_smote", IMAGE_SETS, "trees", (200,)),
]
RFS_CANDIDATES = [
    *_cands("cox", ALL_SETS, "alpha", (1.0, 10.0, 100.0)),
    *_cands("gradient_boosting_survival", IMAGE_SETS, "iterations", (100,)),
    *_cands("cox_predicted_hpv", IMAGE_SETS, "alpha", (10.0,)),
]
# With a radiomics table (--radiomics): seed 001's integration of radiomics, one penalised model per task family.
RADIOMICS_SET = ("clinical_volumes_suv_radiomics", _CLINICAL + _VOLUMES + _SUV + RADIOMICS_FEATURES)
RADIOMICS_CANDIDATES = {
    "hpv": [Candidate("logistic", *RADIOMICS_SET, {"C": 0.01}),
            Candidate("hist_gradient_boosting", *RADIOMICS_SET, {"iterations": 100})],
    "rfs": [Candidate("cox", *RADIOMICS_SET, {"alpha": 100.0}),
            Candidate("cox_predicted_hpv", *RADIOMICS_SET, {"alpha": 100.0})],
}  # fmt: skip
TARGETS = {"rfs": ("c_index", 0.68), "hpv": ("balanced_accuracy", 0.70)}


def provenance(args: argparse.Namespace, data: Cohorts) -> dict:
    """Where the models came from: input hashes, groups, sizes, seed (no timestamps: reruns are identical)."""
    paths = (args.table, args.suvmax, args.radcure, args.radiomics)
    inputs = {p.name: sha256_of(p) for p in paths if p is not None and p.exists()}
    groups = {str(g): int((data.groups == g).sum()) for g in dict.fromkeys(data.groups)}
    return {
        "inputs_sha256": inputs,
        "groups": groups,
        "cohorts": sorted(set(data.cohorts)),
        "n_patients": len(data),
        "n_rfs_known": int(data.rfs_known.sum()),
        "n_events": int(np.nansum(data.event[data.rfs_known])),
        "n_hpv_known": int(data.labelled("hpv").sum()),
        "n_hpv_negative": int((data.hpv == 0).sum()),
        "measurements_source": "HECKTOR: reference masks (training) vs the product's segmentation (run time); "
        "RADCURE: none (every image feature unknown)",
        "script": "training/train_clinical_models.py",
        "seed": SEED,
        "n_bootstrap": N_BOOT,
    }


def _headline(evaluation: dict, task: str, cohorts: Sequence[str]) -> dict[str, dict]:
    """The shipped recipe's ("selected") held-out figure per centre-disjoint view (each cohort's pooled held-out
    centres, then each held-out cohort), with its distance to the target."""
    metric, target = TARGETS[task]
    rows = evaluation["per_held_out"]["selected"]
    out = {}
    for view in [*(pooled_name(c) for c in cohorts), *cohorts]:
        if view in rows:
            entry = rows[view][metric]
            value = entry["value"]
            out[view] = {**entry, "target": target,
                         "distance_to_target": None if value is None else round(value - target, 4)}  # fmt: skip
    return out


def _summary(task: str, cand: Candidate, headline: dict[str, dict], data: Cohorts) -> str:
    metric = "C-index" if task == "rfs" else "balanced accuracy"
    views = ", ".join(f"{k} {v['value']:.3f}" for k, v in headline.items() if v["value"] is not None)
    groups = "+".join(dict.fromkeys(str(g) for g in data.groups))
    return (f"{task.upper()} model {cand.name} trained on real clinical data ({groups}); nested held-out "
            f"{metric}: {views}")  # fmt: skip


def train_task(data: Cohorts, task: str, cands: Sequence[Candidate], prov: dict) -> tuple[dict, dict]:
    """Nested evaluation, then the same selection on all patients and the final fit: (model JSON, evaluation)."""
    started = time.monotonic()
    evaluation = report(data, evaluate_task(data, cands, task), task)
    logger.info("%s nested evaluation done in %.0f s", task.upper(), time.monotonic() - started)
    final = select(data, cands, task)
    model = fit(data, final.best)
    headline = _headline(evaluation, task, sorted(set(data.cohorts)))
    extra: dict = {
        "candidate": final.best.name,
        "summary": _summary(task, final.best, headline, data),
        "selection_on_all_patients": {name: round(v, 4) for name, v in final.criterion.items()},
        "nested_headline": headline,
        "training": prov,
    }
    if task == "hpv":
        extra["threshold"] = final.thresholds[final.best.name]
        extra["output"] = ("probability of HPV positive, classes balanced within each cohort (prevalence-neutral); "
                           "positive if >= threshold")  # fmt: skip
    else:
        extra["output"] = "risk score; higher = earlier relapse (a ranking score, not a calibrated hazard)"
    evaluation["selection_on_all_patients"] = extra["selection_on_all_patients"]
    evaluation["final_candidate"] = final.best.name
    return model_json(model, task, extra), evaluation


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training clinical", description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="HECKTOR 2025 training table")
    parser.add_argument("--suvmax", type=Path, default=DEFAULT_SUVMAX, help="HECKTOR 2022 SUVmax table")
    parser.add_argument("--radcure", type=Path, default=DEFAULT_RADCURE,
                        help="RADCURE clinical table (training split); 'none' trains on HECKTOR alone")  # fmt: skip
    parser.add_argument("--radiomics", type=Path, default=None,
                        help="radiomics CSV of the HECKTOR patients (python -m training radiomics): adds the "
                        "radiomics candidates")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tasks", default="rfs,hpv", help="comma-separated subset of rfs,hpv")
    parser.add_argument("--card-only", action="store_true",
                        help="only rewrite MODEL_CARD_clinical.md from the files already in --out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.card_only:
        write_card(args.out)
        return 0
    if str(args.radcure).lower() == "none":
        args.radcure = None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_cohorts(args.table, args.suvmax, args.radcure, args.radiomics)
    prov = provenance(args, data)
    logger.info("training patients: %s", prov["groups"])
    evaluations = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        cands = HPV_CANDIDATES if task == "hpv" else RFS_CANDIDATES
        if args.radiomics is not None:
            cands = [*cands, *RADIOMICS_CANDIDATES[task]]
        model, evaluations[task] = train_task(data, task, cands, prov)
        write_json(args.out / f"{task}_model.json", model)
        logger.info("%s", model["summary"])
    evaluation_path = args.out / "clinical_evaluation.json"
    if evaluation_path.exists():  # a run of one task keeps the other task's table
        evaluations = {**json.loads(evaluation_path.read_text()), **evaluations}
    write_json(evaluation_path, evaluations)
    if {"rfs", "hpv"} <= set(evaluations):
        write_card(args.out)
    logger.info("wrote %s", args.out)
    return 0


def write_card(folder: Path) -> Path:
    """MODEL_CARD_clinical.md from the evaluation table and the two model files in ``folder``."""
    def read(name: str) -> dict:
        return json.loads((folder / name).read_text())

    card = model_card(read("clinical_evaluation.json"), read("rfs_model.json"), read("hpv_model.json"))
    path = folder / "MODEL_CARD_clinical.md"
    atomic_write(path, lambda tmp: tmp.write_text(card))
    return path


if __name__ == "__main__":
    raise SystemExit(main())
