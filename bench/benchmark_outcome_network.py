"""Run-time cost of the Tasks 2/3 image network per case (CPU), beside the pipeline's other stages.

A default-size network (seed 000: ResNet-18 widths 64-512, stride-2 stem, 96^3 patch, 13 clinical features)
with random weights is exported the way ``python -m training outcome-export`` exports it (ONNX listed in the
manifest) into a copy of ``--weights-dir``. Then:

1. the network alone: onnxruntime (the image's path) and torch eager on one case's inputs, median of 5 runs
   after a warm-up, with 1 thread and with the machine's threads;
2. the pipeline on the SYNTHETIC ``median`` case of :mod:`bench.benchmark_pipeline` (fresh process each, as that
   benchmark measures), once with the clinical models and once with the network: the ``predict`` stage holds the
   network's whole cost (patch, masks, clinical vector, inference).

Usage::

    python -m bench.benchmark_outcome_network [--weights-dir model_weights] [--repeats 5]

Not a test (no thresholds); prints figures only. Random weights cost what trained ones cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.benchmark_pipeline import measure_case
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, load_manifest


def random_network_folder(weights_dir: Path, out_dir: Path) -> Path:
    """``weights_dir`` plus a default-size outcome network with random weights (ONNX in the manifest)."""
    import torch

    from hecktor.outcome.features import FeatureScaling
    from hecktor.outcome.torch_backend.network import OutcomeNetwork
    from training.outcome_export import export_outcome_model
    from training.outcome_train import OutcomeTrainSettings, TrainedOutcome

    settings = OutcomeTrainSettings()
    torch.manual_seed(0)
    network = OutcomeNetwork(settings.arch).eval()
    scaling = [FeatureScaling(name, 0.0, 0.0, 1.0) for name in settings.clinical_features]
    trained = TrainedOutcome(network, scaling, settings, (), (), 0, [], {})
    preprocess = json.loads(json.dumps(asdict(load_manifest(weights_dir).preprocess)))
    dataset = {
        "patch_size": [96, 96, 96],
        "ct_window_hu": [-1000.0, 3000.0],
        "synthetic": True,
        "source": "random weights (benchmark)",
        "preprocess": preprocess,
    }
    return export_outcome_model(trained, dataset, out_dir, base=weights_dir)


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up (allocation, lazy initialisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_alone(folder: Path, repeats: int) -> list[tuple[str, int, float]]:
    """(backend, threads, seconds per case) for onnxruntime and torch eager."""
    import torch

    from hecktor.outcome.runtime import load_onnx_outcome
    from hecktor.outcome.torch_backend.network import build_outcome_network

    manifest = load_manifest(folder)
    section = manifest.outcome_network
    assert section is not None
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(1, 2, 96, 96, 96)).astype(np.float32)
    masks = (rng.uniform(size=(1, 2, 96, 96, 96)) > 0.95).astype(np.float32)
    clinical = rng.normal(size=(1, len(section.clinical_features))).astype(np.float32)
    network = build_outcome_network(dict(section.arch_kwargs)).eval()
    tensors = [torch.from_numpy(a) for a in (image, masks, clinical)]
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        runner = load_onnx_outcome(folder / section.weights, section.sha256, num_threads=threads)
        rows.append(("onnxruntime", threads, _median_seconds(lambda r=runner: r(image, masks, clinical), repeats)))
        torch.set_num_threads(threads)
        with torch.inference_mode():
            rows.append(("torch eager", threads, _median_seconds(lambda: network(*tensors), repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_network_folder(args.weights_dir, Path(tmp) / "with_network")
        print("image network alone (1 x 2 x 96^3 patch, default width, random weights):")
        print(f"  {'backend':<14}{'threads':>8}{'s / case':>10}")
        for backend, threads, seconds in network_alone(folder, args.repeats):
            print(f"  {backend:<14}{threads:8d}{seconds:10.3f}")
        figures = {
            label: measure_case("median", weights, Path(tmp) / label)
            for label, weights in (("clinical", args.weights_dir), ("network", folder))
        }
    stages = list(dict.fromkeys(r[0] for f in figures.values() for r in f["rows"]))
    print("\npipeline on the SYNTHETIC median case (seconds per stage; 'predict' holds the network):")
    print(f"  {'stage':<12}{'clinical':>10}{'network':>10}")
    for stage in stages:
        cells = [next((f"{r[1]:.2f}" for r in f["rows"] if r[0] == stage), "-") for f in figures.values()]
        print(f"  {stage:<12}{cells[0]:>10}{cells[1]:>10}")
    peaks = [max(r[2] for r in f["rows"]) for f in figures.values()]
    print(f"  {'peak RSS MB':<12}{peaks[0]:10.0f}{peaks[1]:10.0f}")
    print(f"  {'load s':<12}{figures['clinical']['load_s']:10.2f}{figures['network']['load_s']:10.2f}")


if __name__ == "__main__":
    main()
