"""``python -m training``: contoured PET/CT in, the container's ``model_weights/`` folder out.

    python -m training --work W prepare DATA [--suv-factors CSV]
    python -m training --work W plan
    python -m training --work W train --split kfold5 --fold 0          (once per fold; --num-gpus N for DDP)
    python -m training --work W export OUT_DIR --split kfold5
    python -m training --work W evaluate --split kfold5
    python -m training --work W radiomics DATA [--out CSV]          (radiomics of the reference masks)
    python -m training --work W outcome-prepare DATA --table CSV    (Tasks 2/3 image network, seed 000)
    python -m training --work W outcome-train [--epochs 20] [--resume]
    python -m training --work W outcome-export OUT_DIR [--backend onnxruntime|torch]

``W`` holds nnU-Net's raw, preprocessed and results folders. Every step can be re-run: ``prepare`` skips
finished cases, ``train --resume`` continues from the last checkpoint, ``export`` writes a new folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.workspace import DEFAULT_DATASET, SHIPPED_MODEL_DIR, Workspace

__all__ = ["main"]

log = logging.getLogger("training")


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("prepare", help="cases (HECKTOR training layout or platform layout + label) -> nnU-Net "
                            "raw dataset on the container's ROI grid")
    p.add_argument("source", type=Path, help="folder with 'Task 1/<ID>/...' or case folders")
    p.add_argument("--suv-factors", type=Path, default=None,
                   help="CSV with pid, bqml_to_suvbw_factor for PETs stored in Bq/mL "
                        "(e.g. ../shared/data/clinical/hecktor_pet_bqml_suv_factors.csv)")
    p.add_argument("--preprocess-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="take the ROI settings from this model folder's manifest (default: the shipped one)")


def _add_plan(commands: argparse._SubParsersAction) -> None:
    from training.plan import PlanSettings

    defaults = PlanSettings()
    p = commands.add_parser("plan", help="nnU-Net fingerprint, plans (1 mm, STU-Net-S, 128^3, batch 2), "
                            "preprocessing, and the k-fold and centre-out splits")
    p.add_argument("--patch-size", type=int, nargs=3, default=list(defaults.patch_size), metavar=("Z", "Y", "X"))
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--stunet-dims", type=int, nargs=6, default=list(defaults.stunet_dims),
                   help="STU-Net widths per level (default STU-Net-S; tests use tiny ones)")
    p.add_argument("--processes", type=int, default=defaults.num_processes)


def _add_train(commands: argparse._SubParsersAction) -> None:
    from training.losses import LOSS_NAMES
    from training.plan import SPLIT_NAMES
    from training.train import ARCHITECTURES, TrainSettings

    d = TrainSettings()
    p = commands.add_parser("train", help="train one fold with nnU-Net (HecktorTrainer)")
    p.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=d.architecture)
    p.add_argument("--loss", choices=LOSS_NAMES, default=d.loss, help="ce_dice (seed 000) or oda (seed 001)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iterations", type=int, default=d.iterations_per_epoch, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=d.val_iterations_per_epoch)
    p.add_argument("--split", choices=SPLIT_NAMES, default=d.split)
    p.add_argument("--fold", type=int, default=d.fold)
    p.add_argument("--num-gpus", type=int, default=d.num_gpus, help="> 1: nnU-Net's DDP")
    p.add_argument("--device", choices=["cuda", "cpu", "mps"], default=d.device)
    p.add_argument("--resume", action="store_true", help="continue from the fold's latest checkpoint")
    p.add_argument("--data-workers", type=int, default=None, help="nnU-Net data-augmentation processes per GPU")


def _add_export(commands: argparse._SubParsersAction) -> None:
    from training.plan import SPLIT_NAMES

    p = commands.add_parser("export", help="trained folds -> a self-contained model folder for the container")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--configuration", default=None, help="trained configuration (default: the only one)")
    p.add_argument("--split", choices=SPLIT_NAMES, action="append", default=None,
                   help="export the folds of this split (repeatable; default kfold5)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="only these folds of each split")
    p.add_argument("--onnx", action="store_true", help="ONNX members for the onnxruntime image flavour")
    p.add_argument("--fp16-weights", action="store_true", help="with --onnx: store weights in float16")
    p.add_argument("--base", type=Path, default=None, metavar="MODEL_DIR",
                   help="model folder whose Task 2/3 files and settings are carried over (default: the shipped one)")


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    from training.plan import SPLIT_NAMES

    p = commands.add_parser("evaluate", help="cross-validation report (challenge metrics) over the trained folds")
    p.add_argument("--configuration", default=None)
    p.add_argument("--split", choices=SPLIT_NAMES, default="kfold5")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")


def _add_radiomics(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("radiomics", help="radiomics of every contoured case (the container's measure-stage "
                            "function, the manifest's radiomics settings) -> one CSV row per case")
    p.add_argument("source", type=Path, help="folder with 'Task 1/<ID>/...' or case folders (as for prepare)")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (default: WORK/radiomics.csv)")
    p.add_argument("--suv-factors", type=Path, default=None, help="as for prepare")
    p.add_argument("--settings-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="take the radiomics settings from this model folder's manifest (default: the shipped one)")


def _add_outcome(commands: argparse._SubParsersAction) -> None:
    from training.outcome_data import DEFAULT_CT_WINDOW_HU, DEFAULT_PATCH_SIZE
    from training.outcome_train import OutcomeTrainSettings

    p = commands.add_parser("outcome-prepare", help="cases + Task 2/3 table -> image network samples (container ROI, "
                            "lesion-centred patch, measurements on the reference mask)")
    p.add_argument("source", type=Path, help="folder with 'Task 1/<ID>/...' or case folders")
    p.add_argument("--table", type=Path, required=True,
                   help="CSV: PatientID, ehr.json fields, RFS, Relapse, HPV Status")
    p.add_argument("--suv-factors", type=Path, default=None, help="CSV with pid, bqml_to_suvbw_factor")
    p.add_argument("--preprocess-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="take the ROI settings from this model folder's manifest (default: the shipped one)")
    p.add_argument("--patch-size", type=int, nargs=3, default=list(DEFAULT_PATCH_SIZE), metavar=("Z", "Y", "X"))
    p.add_argument("--ct-window", type=float, nargs=2, default=list(DEFAULT_CT_WINDOW_HU), metavar=("LO", "HI"))
    d = OutcomeTrainSettings()
    p = commands.add_parser("outcome-train", help="train the Tasks 2/3 image network (seed 000) on prepared samples")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr-image", type=float, default=d.lr_image)
    p.add_argument("--lr-head", type=float, default=d.lr_head)
    p.add_argument("--rfs-loss", choices=["hazard", "cox_rank"], default=d.rfs_loss,
                   help="seed 000's discrete-time hazard NLL or seed 003's Cox + pairwise ranking")
    p.add_argument("--hpv-weight", type=float, default=d.hpv_weight)
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    p.add_argument("--no-flip", action="store_true", help="no left-right flips")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--features", nargs="+", default=list(d.clinical_features), help="clinical vector features")
    p.add_argument("--widths", type=int, nargs=4, default=list(d.arch.block_inplanes), help="ResNet-18 stage widths")
    p.add_argument("--clinical-embedding", type=int, default=d.arch.clinical_embedding)
    p.add_argument("--head-hidden", type=int, default=d.arch.head_hidden)
    p.add_argument("--dropout", type=float, default=d.arch.dropout)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p = commands.add_parser("outcome-export", help="trained image network -> a model folder (base folder + network)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime",
                   help="which file the manifest lists (both are written)")
    p.add_argument("--base", type=Path, default=None, metavar="MODEL_DIR",
                   help="model folder the rest is carried over from (default: the shipped one)")


def _run_outcome(args: argparse.Namespace, workspace: Workspace) -> int:
    from training.outcome_data import load_samples, outcome_dir

    train_dir = outcome_dir(workspace) / "train"
    if args.command == "outcome-prepare":
        from hecktor.core.manifest import load_manifest
        from training.outcome_data import prepare_outcome_samples
        from training.prepare import read_suv_factors

        config = load_manifest(args.preprocess_from or SHIPPED_MODEL_DIR).preprocess
        dataset = prepare_outcome_samples(workspace, args.source, args.table, config,
                                          read_suv_factors(args.suv_factors), tuple(args.patch_size),
                                          (args.ct_window[0], args.ct_window[1]))
        print(f"{outcome_dir(workspace)}: {dataset['cases']} cases ready")
        return 0 if dataset["cases"] else 1
    if args.command == "outcome-train":
        from dataclasses import replace

        import torch

        from training.outcome_train import OutcomeTrainSettings, save_trained, train_outcome_network

        if args.threads:
            torch.set_num_threads(args.threads)
        samples, dataset = load_samples(workspace)
        d = OutcomeTrainSettings()
        arch = replace(d.arch, block_inplanes=tuple(args.widths), clinical_features=len(args.features),
                       clinical_embedding=args.clinical_embedding, head_hidden=args.head_hidden, dropout=args.dropout)
        settings = replace(d, epochs=args.epochs, batch_size=args.batch_size, lr_image=args.lr_image,
                           lr_head=args.lr_head, rfs_loss=args.rfs_loss, hpv_weight=args.hpv_weight,
                           validation_fraction=args.validation_fraction, flip_lr=not args.no_flip, seed=args.seed,
                           clinical_features=tuple(args.features), arch=arch)
        trained = train_outcome_network(samples, settings, train_dir, args.resume, bool(dataset.get("synthetic")))
        save_trained(trained, train_dir, dataset)
        print(f"trained: {train_dir} (selected epoch {trained.best_epoch}, validation {trained.validation})")
        return 0
    from training.outcome_export import export_outcome_model
    from training.outcome_train import load_trained

    if not (train_dir / "trained.json").is_file():
        raise FileNotFoundError(f"{train_dir / 'trained.json'}: nothing has been trained yet (run outcome-train)")
    trained, dataset = load_trained(train_dir)
    samples, _ = load_samples(workspace)
    centres = sorted({s.centre for s in samples if s.case_id in set(trained.train_ids)})
    folder = export_outcome_model(trained, dataset, args.out_dir, args.base or SHIPPED_MODEL_DIR, args.backend,
                                  centres)
    print(f"model folder: {folder} (run it with: python inference.py --weights {folder} ...)")
    return 0


DELEGATED = {"clinical": "training.train_clinical_models", "random-weights": "training.make_random_weights"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("hecktor-training"),
                        help="work folder (nnU-Net raw/preprocessed/results); default ./hecktor-training")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="nnU-Net dataset name (DatasetXXX_Name)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_plan, _add_train, _add_export, _add_evaluate, _add_radiomics, _add_outcome):
        add(commands)
    commands.add_parser("clinical", help="train the Task 2/3 clinical models (training/train_clinical_models.py)",
                        add_help=False)
    commands.add_parser("random-weights", help="random (untrained) members for tests (make_random_weights.py)",
                        add_help=False)
    return parser


def _run(args: argparse.Namespace, workspace: Workspace) -> int:
    if args.command.startswith("outcome-"):
        return _run_outcome(args, workspace)
    if args.command == "prepare":
        from hecktor.core.manifest import load_manifest
        from training.prepare import format_summary, prepare_dataset, read_suv_factors

        config = load_manifest(args.preprocess_from or SHIPPED_MODEL_DIR).preprocess
        summary = prepare_dataset(args.source, workspace.raw_dataset, config, read_suv_factors(args.suv_factors))
        print(format_summary(summary))
        return 0 if summary.cases else 1
    if args.command == "plan":
        from training.plan import PlanSettings, plan_and_preprocess

        settings = PlanSettings(tuple(args.patch_size), args.batch_size, tuple(args.stunet_dims), args.processes)
        plans = plan_and_preprocess(workspace, settings)
        print(f"plans: {plans}\nsplits: {workspace.preprocessed_dataset / 'splits_index.json'}")
        return 0
    if args.command == "train":
        from training.train import TrainSettings, train_fold

        settings = TrainSettings(args.architecture, args.loss, args.epochs, args.iterations, args.val_iterations,
                                 args.split, args.fold, args.num_gpus, args.device, args.resume)
        workspace.activate(args.data_workers)
        print(f"fold output: {train_fold(workspace, settings)}")
        return 0
    if args.command == "export":
        from training.export import export_model_folder

        folder = export_model_folder(workspace, args.out_dir, args.configuration, tuple(args.split or ["kfold5"]),
                                     onnx=args.onnx, fp16_weights=args.fp16_weights,
                                     base=args.base or SHIPPED_MODEL_DIR,
                                     folds=args.folds)
        print(f"model folder: {folder} (run it with: python inference.py --weights {folder} ...)")
        return 0
    if args.command == "evaluate":
        from training.cv_report import cross_validation_report, format_report, write_report

        report = cross_validation_report(workspace, args.configuration, args.split)
        print(format_report(report))
        if args.json:
            write_report(args.json, report)
        return 0
    if args.command == "radiomics":
        from hecktor.core.manifest import load_manifest
        from training.prepare import read_suv_factors
        from training.radiomics_table import radiomics_table, write_radiomics_csv

        model_dir = args.settings_from or SHIPPED_MODEL_DIR
        config = load_manifest(model_dir).radiomics
        if config is None:
            raise ValueError(f"{model_dir}: the manifest has no radiomics section (it sets how they are computed)")
        table = radiomics_table(args.source, config, read_suv_factors(args.suv_factors))
        out = write_radiomics_csv(args.out or workspace.root / "radiomics.csv", table.rows)
        for skipped in table.skipped:
            print(f"skipped {skipped.case_id}: {skipped.reason}")
        print(f"{len(table.rows)} cases -> {out}")
        return 0 if table.rows else 1
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The two older scripts keep their own command lines: everything after their name is theirs, whatever global
    # options come before it (the training image's entry point always passes --work /data).
    args, rest = parser.parse_known_args(argv)
    if args.command in DELEGATED:
        from importlib import import_module

        return int(import_module(DELEGATED[args.command]).main(rest) or 0)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Our loggers at INFO; the libraries' (nnU-Net prints its own progress) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("training", "hecktor"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    workspace = Workspace(args.work.absolute(), args.dataset)
    workspace.activate()
    try:
        return _run(args, workspace)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        log.error("%s", exc, exc_info=args.verbose)
        return 2
