"""Ensemble benchmark: per-stage wall time and peak RSS of the full three-task pipeline on a HECKTOR-sized
SYNTHETIC case, for 1 and 10 ensemble members, torch vs onnxruntime, side by side with the organisers'
template approach (resample the FULL CT and PET to 1 mm, crop, MONAI ``sliding_window_inference`` with
overlap 0.5) driving the same network. Not a test: it prints figures and the issue's targets, no pass/fail.

    python -m bench.benchmark_ensemble --quick                   # smoke test of the script, < 1 min
    python -m bench.benchmark_ensemble                           # CPU plan (see below)
    python -m bench.benchmark_ensemble --device cuda --json out.json

Every configuration (approach x backend x members) runs in its OWN spawned child process, so the peak
RSS (``ru_maxrss``) printed for it is that configuration's alone; the case and the weights are written
by children too. Networks carry RANDOM weights (speed only): full STU-Net-S (default strides, five
(2, 2, 2) poolings), patch 128^3, written by ``training.make_random_weights``; the clinical models of
``model_weights/`` are copied next to them so Tasks 2 and 3 run as well. Our engine runs in the manifest's
default mode (Gaussian sliding window) unless ``--whole-roi`` is given. The template crops its
200 x 200 x 310 mm box around the same brain-anchored centre our pipeline uses, so both see the same ROI.
Timings are cold (one case per fresh process, as in the platform's container).

CPU plan (default on ``--device cpu``): every approach/backend is measured with 1 member; with more
members only our torch path is measured; other member counts are printed as ``extrapolated = n x
segment(1 member) + rest``, never as measurements. ``--measure-all`` (default on CUDA and with
``--quick``) measures every configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.benchmark_pipeline import head_on_top, median_geometry_values, write_case_in_child
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.io.phantom import PhantomGeometry
from hecktor.pipeline import peak_rss_mb

STAGES = ("read", "preprocess", "segment", "restore", "measure", "predict", "write")
TARGET_MEMBERS = 10
TEMPLATE_OVERLAP = 0.5  # the organisers' template
TEMPLATE_SW_BATCH = 2
TARGET_TOTAL_S = 600.0
TARGET_RSS_MB = 8192.0
TARGET_PRE_POST_S = 5.0
TARGET_TEMPLATE_RATIO = 3.0
TARGET_ORT_RATIO = 1.3
CLINICAL_MODELS = ("rfs_model.json", "hpv_model.json")


@dataclass(frozen=True)
class NetworkSpec:
    """The benchmarked member architecture (STU-Net) and its sliding-window patch."""

    name: str
    arch_kwargs: dict[str, Any]
    patch: tuple[int, int, int]  # z, y, x
    roi_mm: tuple[float, float, float] | None = None  # x, y, z; None: the manifest default 200 x 200 x 310


FULL_NETWORK = NetworkSpec("STU-Net-S, strides (2,2,2)x5", {}, (128, 128, 128))
QUICK_NETWORK = NetworkSpec(
    "tiny STU-Net (--quick)",
    {"depth": [1, 1, 1, 1], "dims": [4, 8, 16, 32], "pool_op_kernel_sizes": [[2, 2, 2]] * 3,
     "conv_kernel_sizes": [[3, 3, 3]] * 4},
    (48, 48, 48),
    (64.0, 64.0, 64.0),
)


@dataclass(frozen=True)
class Config:
    approach: str  # "ours" or "template"
    backend: str  # "torch" or "onnxruntime"
    members: int

    @property
    def label(self) -> str:
        return f"{self.approach}/{self.backend}/{self.members}m"


@dataclass(frozen=True)
class Job:
    """Everything a child needs to run one configuration (picklable)."""

    config: Config
    case_dir: Path
    weights_dir: Path
    out_dir: Path
    device: str


@dataclass
class Row:
    """One line of the table: a measured configuration, or one extrapolated from a 1-member run."""

    config: Config
    stages: dict[str, float]
    load_s: float
    peak_rss_mb: float | None
    measured: bool
    cuda_max_mb: float | None = None
    other_cores: float | None = None  # mean CPU cores used by OTHER processes during the run
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


# ----------------------------------------------------------------------------------------------------------------
# Measuring inside a child


def _busy_cpu_s() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat), or NaN."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Average number of cores OTHER processes kept busy between construction and :meth:`other_cores`."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._busy = _busy_cpu_s()
        self._own = sum(os.times()[:2])

    def other_cores(self) -> float:
        wall = time.perf_counter() - self._wall
        others = (_busy_cpu_s() - self._busy) - (sum(os.times()[:2]) - self._own)
        return max(others, 0.0) / wall if wall > 0 else math.nan


class Stopwatch:
    """Per-stage wall time; CUDA work is synchronised before a stage's clock stops."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _child_setup(device: str) -> None:
    import logging

    import torch

    from hecktor.segment.ensemble import available_cpus

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(available_cpus())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _cuda_max_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


# ----------------------------------------------------------------------------------------------------------------
# Our pipeline (child)


def _build_pipeline(weights_dir: Path, device: str) -> Any:
    from hecktor.core.manifest import load_manifest
    from hecktor.pipeline import Pipeline

    return Pipeline(load_manifest(weights_dir), device)


def run_ours(job: Job) -> dict[str, Any]:
    """The product: ``Pipeline.run`` then publishing the outputs, cold, one case in a fresh process."""
    from hecktor.apps.cli import publish_case_result
    from hecktor.pipeline import ALL_TASKS

    _child_setup(job.device)
    meter = CpuMeter()
    start = time.perf_counter()
    pipeline = _build_pipeline(job.weights_dir, job.device)
    load_s = time.perf_counter() - start
    result = pipeline.run(job.case_dir)
    start = time.perf_counter()
    publish_case_result(result, job.out_dir, ALL_TASKS)
    stages = {t.stage: t.seconds for t in result.timings} | {"write": time.perf_counter() - start}
    gtvp_ml = None if result.measurements is None else result.measurements.gtvp_volume_ml
    notes = {"roi_located_by": result.roi_located_by, "gtvp_ml": gtvp_ml}
    return asdict(Row(job.config, stages, load_s, peak_rss_mb(), True, _cuda_max_mb(job.device), meter.other_cores(),
                      notes))


# ----------------------------------------------------------------------------------------------------------------
# The organisers' template approach (child)


def _template_networks(manifest: Any, device: str) -> list[Any]:
    from hecktor.segment.torch_backend.networks import build_network
    from hecktor.segment.torch_backend.runner import load_safetensors

    networks = []
    for member in manifest.ensemble.members:
        network = build_network(member.architecture, dict(member.arch_kwargs))
        network.load_state_dict(load_safetensors(manifest.weights_dir / member.weights, member.sha256), strict=True)
        networks.append(network.eval().requires_grad_(False).to(device))
    return networks


def _same_roi_grid(case: Any, config: Any) -> Any:
    """The 1 mm ROI grid our pipeline uses (same brain-anchored centre, same clipping), without resampling."""
    from hecktor.preprocess.roi import place_roi

    return place_roi(case, config).grid


def _resample_full(image: Any, ct: Any, spacing: float, default: float) -> Any:
    """``image`` resampled (linear) onto a ``spacing`` mm grid over the whole CT extent, as the template does."""
    import SimpleITK as sitk

    size = [max(1, round(n * s / spacing)) for n, s in zip(ct.GetSize(), ct.GetSpacing(), strict=True)]
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(size)
    resampler.SetOutputSpacing([spacing] * 3)
    resampler.SetOutputOrigin(ct.GetOrigin())
    resampler.SetOutputDirection(ct.GetDirection())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(default)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler.Execute(image)


def _crop(full: Any, roi: Any) -> tuple[tuple[slice, slice, slice], Any]:
    """(z, y, x) slices of ``full`` covering ``roi``'s box, and the crop's grid (an empty image)."""
    import numpy as np
    import SimpleITK as sitk

    start = np.clip(np.asarray(full.TransformPhysicalPointToIndex(roi.GetOrigin())), 0, None)
    stop = np.minimum(start + np.asarray(roi.GetSize()), np.asarray(full.GetSize()))
    grid = sitk.Image([int(v) for v in stop - start], sitk.sitkUInt8)
    grid.SetSpacing(full.GetSpacing())
    grid.SetDirection(full.GetDirection())
    grid.SetOrigin(full.TransformIndexToPhysicalPoint([int(v) for v in start]))
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0])), grid


def template_preprocess(case: Any, manifest: Any) -> tuple[Any, Any]:
    """Full CT and PET -> 1 mm over the CT extent, crop the ROI box, normalise: ((2, z, y, x) float32, crop grid)."""
    import numpy as np
    import SimpleITK as sitk

    from hecktor.preprocess.normalise import normalise_ct, normalise_pet

    config = manifest.preprocess
    roi = _same_roi_grid(case, config)
    full_ct = _resample_full(case.ct, case.ct, config.spacing_mm, -1024.0)
    full_pet = _resample_full(case.pet, case.ct, config.spacing_mm, 0.0)
    box, grid = _crop(full_ct, roi)
    ct = sitk.GetArrayViewFromImage(full_ct)[box].copy()
    pet = np.maximum(sitk.GetArrayViewFromImage(full_pet)[box], 0.0)
    del full_ct, full_pet
    image = np.stack([normalise_ct(ct, manifest.ensemble.members[0].ct_normalisation), normalise_pet(pet)])
    return image, grid


def template_segment(image: Any, networks: list[Any], patch: tuple[int, int, int], device: str) -> Any:
    """MONAI Gaussian sliding window (overlap 0.5, batch 2) per member, softmax, mean: (K, z, y, x) tensor."""
    import torch
    from monai.inferers import sliding_window_inference as monai_sliding_window

    inputs = torch.from_numpy(image)[None].to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()
    total = None
    with torch.inference_mode(), autocast:
        for network in networks:
            logits = monai_sliding_window(inputs, roi_size=patch, sw_batch_size=TEMPLATE_SW_BATCH, predictor=network,
                                          overlap=TEMPLATE_OVERLAP, mode="gaussian")
            probs = torch.softmax(logits.float(), dim=1)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        return total.div_(len(networks))[0]


def template_restore(probs: Any, grid: Any, ct: Any) -> Any:
    """Argmax on the crop, then the labels resampled (nearest neighbour) onto the CT grid."""
    import SimpleITK as sitk
    import torch

    labels = sitk.GetImageFromArray(probs.argmax(0).to("cpu", torch.uint8).numpy())
    labels.CopyInformation(grid)
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)


def run_template(job: Job) -> dict[str, Any]:
    """The template approach on the same torch networks, each stage timed like ours."""
    from hecktor.apps.cli import publish_case_result
    from hecktor.core.manifest import load_manifest
    from hecktor.io.read import read_case
    from hecktor.measure.lesions import measure
    from hecktor.outcome.predict import load_clinical_models, predict
    from hecktor.pipeline import ALL_TASKS, CaseResult

    _child_setup(job.device)
    meter = CpuMeter()
    start = time.perf_counter()
    manifest = load_manifest(job.weights_dir)
    networks = _template_networks(manifest, job.device)
    models = load_clinical_models(manifest.rfs_model, manifest.hpv_model)
    load_s = time.perf_counter() - start
    clock = Stopwatch(job.device)
    with clock.stage("read"):
        case = read_case(job.case_dir)
    with clock.stage("preprocess"):
        image, grid = template_preprocess(case, manifest)
    with clock.stage("segment"):
        probs = template_segment(image, networks, tuple(manifest.ensemble.members[0].patch_size), job.device)
    with clock.stage("restore"):
        labels = template_restore(probs, grid, case.ct)
    with clock.stage("measure"):
        measurements = measure(labels, case.pet)
    with clock.stage("predict"):
        predictions = predict(models, case.clinical, measurements)
    with clock.stage("write"):
        publish_case_result(CaseResult(case.case_id, labels, measurements, predictions, "template", "template"),
                            job.out_dir, ALL_TASKS)
    notes = {"roi_shape_zyx": list(image.shape[1:]), "gtvp_ml": measurements.as_dict().get("gtvp_volume_ml")}
    return asdict(Row(job.config, clock.seconds, load_s, peak_rss_mb(), True, _cuda_max_mb(job.device),
                      meter.other_cores(), notes))


def run_config(job: Job) -> dict[str, Any]:
    """One configuration in this (child) process; a plain dict comes back (classes of a spawned ``__main__``
    do not unpickle in the parent)."""
    return run_template(job) if job.config.approach == "template" else run_ours(job)


# ----------------------------------------------------------------------------------------------------------------
# Probe: one window and one whole-ROI pass (child)


@dataclass(frozen=True)
class ProbeJob:
    network: NetworkSpec
    roi_zyx: tuple[int, int, int]
    overlap: float
    device: str
    onnx_path: Path | None


def _time_call(call: Callable[[], Any], device: str) -> float:
    start = time.perf_counter()
    call()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - start


def _probe_onnx(path: Path, patch: tuple[int, int, int]) -> list[float]:
    import numpy as np
    import onnxruntime as ort

    from hecktor.segment.ensemble import available_cpus

    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    window = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 2, *patch), np.float32)}
    return [_time_call(lambda: session.run(None, window), "cpu") for _ in range(2)]


def run_probe(job: ProbeJob) -> dict[str, Any]:
    """Seconds for one patch window (twice: cold, warm) and one whole-ROI pass, torch fp32 eager."""
    import torch

    from hecktor.segment.torch_backend.networks import build_network, input_divisor
    from hecktor.segment.torch_backend.sliding_window import whole_image_shape, window_slices

    _child_setup(job.device)
    network = build_network("STUNet", dict(job.network.arch_kwargs)).eval().requires_grad_(False).to(job.device)
    window = torch.randn(1, 2, *job.network.patch, device=job.device)
    whole_shape = whole_image_shape(job.roi_zyx, math.lcm(32, *input_divisor(network)))
    whole = torch.randn(1, 2, *whole_shape, device=job.device)
    with torch.inference_mode():
        window_s = [_time_call(lambda: network(window), job.device) for _ in range(2)]
        whole_s = _time_call(lambda: network(whole), job.device)
    return {
        "window_s": window_s,
        "whole_roi_s": whole_s,
        "whole_roi_shape_zyx": list(whole_shape),
        "windows_per_member": len(window_slices(job.roi_zyx, job.network.patch, job.overlap)),
        "template_windows_per_member": len(window_slices(job.roi_zyx, job.network.patch, TEMPLATE_OVERLAP)),
        "onnx_window_s": _probe_onnx(job.onnx_path, job.network.patch) if job.onnx_path else None,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_max_mb": _cuda_max_mb(job.device),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Preparing weights (child)


@dataclass(frozen=True)
class WeightsJob:
    root: Path
    network: NetworkSpec
    needed: dict[str, tuple[int, ...]]  # backend -> member counts
    ensemble_options: dict[str, Any]


def weights_dir(root: Path, backend: str, members: int) -> Path:
    return root / f"{backend}-{members}"


def _subset(pool: Path, target: Path, members: int, network: NetworkSpec) -> None:
    """``target``: the first ``members`` members of ``pool`` (hard links), their manifest, the clinical models."""
    manifest = json.loads((pool / "manifest.json").read_text())
    entries = manifest["segmentation"]["ensemble"]["members"][:members]
    manifest["segmentation"]["ensemble"]["members"] = entries
    if network.roi_mm is not None:
        manifest["preprocess"] = {**manifest["preprocess"], "roi_size_mm": list(network.roi_mm)}
    target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        try:
            os.link(pool / entry["weights"], target / entry["weights"])
        except OSError:
            shutil.copy2(pool / entry["weights"], target / entry["weights"])
    for name in CLINICAL_MODELS:
        shutil.copy2(DEFAULT_WEIGHTS_DIR / name, target / name)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def prepare_weights(job: WeightsJob) -> dict[str, float]:
    """Random members (one pool per backend), one weights folder per (backend, members); MB per member file."""
    import logging

    from training.make_random_weights import make_random_weights

    logging.basicConfig(level=logging.ERROR)
    sizes = {}
    for backend, counts in job.needed.items():
        pool = job.root / f"{backend}-pool"
        make_random_weights(pool, max(counts), "STUNet", dict(job.network.arch_kwargs), job.network.patch, seed=0,
                            onnx=backend == "onnxruntime", ensemble_options=job.ensemble_options)
        for members in counts:
            _subset(pool, weights_dir(job.root, backend, members), members, job.network)
        first = json.loads((pool / "manifest.json").read_text())["segmentation"]["ensemble"]["members"][0]
        sizes[backend] = (pool / first["weights"]).stat().st_size / 2**20
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# Parent: plan, run children, report


def in_child(function: Callable[[Any], Any], job: Any) -> Any:
    """``function(job)`` in a fresh spawned process (its own peak RSS), result returned by pickling."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, job).result()


def case_geometry(args: argparse.Namespace) -> tuple[PhantomGeometry, str]:
    """The synthetic case's geometry and a line saying where it comes from."""
    median = median_geometry_values()
    if args.quick:
        values = {"ct_size": (128, 128, 60), "ct_spacing": (2.0, 2.0, 3.27), "pet_size": (64, 64, 60),
                  "pet_spacing": (4.0, 4.0, 3.27)}
        return head_on_top(values), "small case (--quick)"
    if args.geometry == "median":
        values = dict(median)
        source = "median of hecktor2022_image_geometry.csv"
    else:
        values = {"ct_size": (512, 512, 200), "ct_spacing": tuple(median["ct_spacing"]),
                  "pet_size": (200, 200, 0), "pet_spacing": (4.0, 4.0, median["pet_spacing"][2])}
        source = "the issue's CT 512x512x~200 at 0.98 mm / PET 200x200 at 4 mm; z spacings: CSV medians"
    if args.geometry == "median" and args.slices is None:
        return head_on_top(values), source
    slices = args.slices or values["ct_size"][2]
    z_mm = slices * values["ct_spacing"][2]
    values["ct_size"] = (*values["ct_size"][:2], slices)
    values["pet_size"] = (*values["pet_size"][:2], round(z_mm / values["pet_spacing"][2]))
    return head_on_top(values), source


def plan(args: argparse.Namespace) -> tuple[list[Config], list[Config]]:
    """(measured, extrapolated) configurations; extrapolated ones always have a measured 1-member sibling."""
    measure_all = args.measure_all or args.device == "cuda" or args.quick
    counts = sorted(set(args.members) | {1, TARGET_MEMBERS})
    combos = [("ours", b) for b in args.backends] + ([("template", "torch")] if args.reference else [])
    measured, extrapolated = [], []
    for approach, backend in combos:
        for members in counts:
            asked = members in args.members or members == 1
            run = asked and (measure_all or members == 1 or (approach, backend) == ("ours", "torch"))
            (measured if run else extrapolated).append(Config(approach, backend, members))
    return measured, extrapolated


def row_from_dict(data: dict[str, Any]) -> Row:
    return Row(**{**data, "config": Config(**data["config"])})


def extrapolate(one: Row, members: int, member_mb: float) -> Row:
    """n members from a measured 1-member row: segment x n, loading x n, RSS + (n - 1) member files; estimates."""
    stages = dict(one.stages) | {"segment": one.stages["segment"] * members}
    rss = None if one.peak_rss_mb is None else one.peak_rss_mb + (members - 1) * member_mb
    return Row(replace(one.config, members=members), stages, one.load_s * members, rss, False,
               notes={"from": one.config.label})


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_table(rows: list[Row], cuda: bool) -> None:
    header = f"{'config':<22}" + "".join(f"{s:>11}" for s in STAGES) + f"{'total':>9}{'load':>7}{'peak RSS MB':>12}"
    header += f"{'CUDA MB':>9}" if cuda else ""
    print(header + f"{'others':>7}  kind")
    for row in rows:
        line = f"{row.config.label:<22}" + "".join(f"{row.stages.get(s, 0.0):11.2f}" for s in STAGES)
        rss = _fmt(row.peak_rss_mb, 0) if row.measured else "~" + _fmt(row.peak_rss_mb, 0)
        line += f"{row.total_s:9.1f}{row.load_s:7.1f}{rss:>12}"
        line += f"{_fmt(row.cuda_max_mb, 0):>9}" if cuda else ""
        kind = "measured" if row.measured else f"EXTRAPOLATED = {row.config.members} x segment(1 member) + rest"
        print(line + f"{_fmt(row.other_cores, 2):>7}  {kind}")
    print("  seconds per stage; total = sum of stages (model loading apart, in 'load'); peak RSS = ru_maxrss of the"
          " configuration's own process; 'others' = mean CPU cores busy with OTHER processes during the run"
          " (> 0.2 means the figures are noisy); '~' = estimate (1-member RSS + member files).")


def find(rows: list[Row], approach: str, backend: str, members: int) -> Row | None:
    return next((r for r in rows if r.config == Config(approach, backend, members)), None)


def _segment_ratio(slow: Row, fast: Row) -> float:
    return slow.stages["segment"] / fast.stages["segment"]


def _rest(row: Row) -> float:
    """Seconds of every stage but the network's."""
    return row.total_s - row.stages["segment"]


def ratio_lines(rows: list[Row], members: list[int]) -> list[str]:
    lines = []
    for n in members:
        ours, template = find(rows, "ours", "torch", n), find(rows, "template", "torch", n)
        if ours and template:
            lines.append(f"template / ours, torch, {n} member(s): total {template.total_s / ours.total_s:.2f}x, "
                         f"segment {_segment_ratio(template, ours):.2f}x, everything but segment "
                         f"{_rest(template) / _rest(ours):.2f}x{_kind(ours, template)}")
        ort = find(rows, "ours", "onnxruntime", n)
        if ours and ort:
            lines.append(f"onnxruntime speed-up over torch eager, {n} member(s): segment "
                         f"{_segment_ratio(ours, ort):.2f}x, total {ours.total_s / ort.total_s:.2f}x{_kind(ours, ort)}")
    for approach, backend in sorted({(r.config.approach, r.config.backend) for r in rows}):
        one, ten = find(rows, approach, backend, 1), find(rows, approach, backend, TARGET_MEMBERS)
        if one and ten:
            lines.append(f"{TARGET_MEMBERS} / 1 members, {approach}/{backend}: total {ten.total_s / one.total_s:.2f}x, "
                         f"segment {_segment_ratio(ten, one):.2f}x{_kind(one, ten)}")
    return lines


def _kind(*rows: Row) -> str:
    return "" if all(r.measured for r in rows) else "  (uses EXTRAPOLATED figures)"


def _verdict(ok: bool | None) -> str:
    return "UNKNOWN" if ok is None else ("MET" if ok else "NOT MET")


def _ensemble_target(ten: Row) -> str:
    seconds = ten.total_s + ten.load_s
    rss = ten.peak_rss_mb if ten.peak_rss_mb is not None else math.inf
    ok = seconds <= TARGET_TOTAL_S and rss <= TARGET_RSS_MB
    return (f"[{_verdict(ok)}] {TARGET_MEMBERS}-member three-task case, {ten.config.backend}: {seconds:.0f} s incl. "
            f"loading (<= {TARGET_TOTAL_S:.0f}), peak RSS {_fmt(ten.peak_rss_mb, 0)} MB (<= {TARGET_RSS_MB:.0f})"
            f"{_kind(ten)}")


def target_lines(rows: list[Row]) -> list[str]:
    lines = [_ensemble_target(r) for b in ("torch", "onnxruntime") if (r := find(rows, "ours", b, TARGET_MEMBERS))]
    one = find(rows, "ours", "torch", 1)
    if one:
        pre_post = one.stages["preprocess"] + one.stages["restore"] + one.stages["write"]
        lines.append(f"[{_verdict(pre_post <= TARGET_PRE_POST_S)}] preprocess + restore + write = {pre_post:.2f} s "
                     f"(<= {TARGET_PRE_POST_S:.0f}); with reading the case {pre_post + one.stages['read']:.2f} s")
    for n in (1, TARGET_MEMBERS):
        ours, template = find(rows, "ours", "torch", n), find(rows, "template", "torch", n)
        if ours and template:
            speed_up = template.total_s / ours.total_s
            lines.append(f"[{_verdict(speed_up >= TARGET_TEMPLATE_RATIO)}] template / ours, {n} member(s): "
                         f"{speed_up:.2f}x (>= {TARGET_TEMPLATE_RATIO:.0f}x){_kind(ours, template)}")
    ours, ort = find(rows, "ours", "torch", 1), find(rows, "ours", "onnxruntime", 1)
    if ours and ort:
        speed_up = _segment_ratio(ours, ort)
        lines.append(f"[{_verdict(speed_up >= TARGET_ORT_RATIO)}] onnxruntime / torch eager (segment, 1 member): "
                     f"{speed_up:.2f}x (>= {TARGET_ORT_RATIO})")
    return lines


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)
    return "unknown"


def machine_facts(device: str) -> dict[str, Any]:
    import torch

    from hecktor.segment.ensemble import available_cpus

    facts: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cpus_usable": available_cpus(), "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "monai": _version("monai"),
        "SimpleITK": _version("SimpleITK"), "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        facts["onnxruntime_providers"] = ort.get_available_providers()
    return facts


def print_probe(probe: dict[str, Any], network: NetworkSpec, device: str) -> None:
    cold, warm = probe["window_s"]
    patch = "x".join(map(str, network.patch))
    whole = "x".join(map(str, probe["whole_roi_shape_zyx"]))
    print(f"probe ({network.name}, torch fp32 eager, {device}, {probe['threads']} threads):")
    print(f"  one {patch} window: {cold:.2f} s cold, {warm:.2f} s warm")
    print(f"  one whole-ROI pass ({whole}): {probe['whole_roi_s']:.2f} s; probe peak RSS {probe['peak_rss_mb']:.0f} MB"
          + (f", CUDA {probe['cuda_max_mb']:.0f} MB" if probe["cuda_max_mb"] is not None else ""))
    n_ours, n_template = probe["windows_per_member"], probe["template_windows_per_member"]
    print(f"  sliding window: {n_template} windows per member at overlap {TEMPLATE_OVERLAP} (template) -> about "
          f"{n_template * warm:.1f} s per member; ours at --overlap: {n_ours} windows")
    if probe["onnx_window_s"]:
        ort_cold, ort_warm = probe["onnx_window_s"]
        print(f"  onnxruntime CPU, one window: {ort_cold:.2f} s cold, {ort_warm:.2f} s warm "
              f"({warm / ort_warm:.2f}x torch warm)")


def segment_estimate_s(probe: dict[str, Any], config: Config, one_pass: bool) -> float:
    """Rough network seconds of a configuration from the probe: (windows x warm window, or one pass) x members."""
    torch_window = probe["window_s"][1]
    window = probe["onnx_window_s"][1] if config.backend == "onnxruntime" and probe["onnx_window_s"] else torch_window
    if config.approach == "template":
        per_member = probe["template_windows_per_member"] * torch_window
    elif one_pass:
        per_member = probe["whole_roi_s"] * window / torch_window
    else:
        per_member = probe["windows_per_member"] * window
    return per_member * config.members


def print_plan_estimate(probe: dict[str, Any], measured: list[Config], one_pass: bool) -> None:
    estimates = {c.label: segment_estimate_s(probe, c, one_pass) for c in measured}
    print(f"  network time this plan needs, estimated from the probe: ~{sum(estimates.values()) / 60:.1f} min ("
          + ", ".join(f"{label} ~{s:.0f} s" for label, s in estimates.items()) + ")", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=None,
                        help=f"ensemble sizes (default: 1 {TARGET_MEMBERS}; with --quick: 1 2)")
    parser.add_argument("--backends", nargs="+", choices=["torch", "onnxruntime"], default=["torch", "onnxruntime"])
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the organisers' template approach (torch) with the same networks")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--overlap", type=float, default=0.5, help="our sliding-window overlap (template: always 0.5)")
    parser.add_argument("--whole-roi", action=argparse.BooleanOptionalAction, default=None,
                        help="our engine runs the whole ROI in one pass when it fits (default: the manifest's default)")
    parser.add_argument("--geometry", choices=["issue", "median"], default="issue",
                        help="issue: CT 512x512x200, PET 200x200 at 4 mm; median: the CSV's median case")
    parser.add_argument("--slices", type=int, default=None, help="CT slices (default: 200 for 'issue', CSV median)")
    parser.add_argument("--measure-all", action="store_true", help="measure every configuration, extrapolate none")
    parser.add_argument("--skip-probe", action="store_true", help="skip the one-window / whole-ROI probe")
    parser.add_argument("--quick", action="store_true", help="tiny network, ROI and case: smoke test in < 1 min")
    parser.add_argument("--json", type=Path, default=None, help="save all figures to this JSON file")
    args = parser.parse_args(argv)
    if args.members is None:
        args.members = [1, 2] if args.quick else [1, TARGET_MEMBERS]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    return args


def whole_roi(args: argparse.Namespace) -> bool:
    """Whether our engine runs the ROI in one pass: ``--whole-roi``/``--no-whole-roi``, else the manifest default."""
    from training.make_random_weights import RANDOM_ENSEMBLE_OPTIONS

    return bool(args.whole_roi if args.whole_roi is not None else RANDOM_ENSEMBLE_OPTIONS["whole_roi_if_fits"])


def _roi_zyx(network: NetworkSpec) -> tuple[int, int, int]:
    from hecktor.core.manifest import load_manifest

    x, y, z = network.roi_mm or load_manifest().preprocess.roi_size_mm
    return (round(z), round(y), round(x))


def _needed_weights(measured: list[Config]) -> dict[str, tuple[int, ...]]:
    needed: dict[str, set[int]] = {}
    for config in measured:
        needed.setdefault(config.backend, set()).add(config.members)
    needed.setdefault("torch", {1})  # the probe and the template use torch members
    return {backend: tuple(sorted(counts)) for backend, counts in needed.items()}


def run_all(args: argparse.Namespace, root: Path, measured: list[Config]) -> tuple[list[Row], dict[str, Any]]:
    """Write case and weights, run the probe and every measured configuration; failures are reported, not fatal."""
    network = QUICK_NETWORK if args.quick else FULL_NETWORK
    geometry, _ = case_geometry(args)
    start = time.perf_counter()
    write_case_in_child(geometry, root / "case")
    options = {"overlap": args.overlap, "whole_roi_if_fits": whole_roi(args), "batch_size": 2}
    sizes = in_child(prepare_weights, WeightsJob(root, network, _needed_weights(measured), options))
    print(f"case and random weights written in {time.perf_counter() - start:.1f} s; member file MB: "
          + ", ".join(f"{b} {mb:.1f}" for b, mb in sizes.items()), flush=True)
    extra: dict[str, Any] = {"member_mb": sizes}
    if not args.skip_probe:
        onnx = next(iter(sorted(weights_dir(root, "onnxruntime", 1).glob("*.onnx"))), None)
        extra["probe"] = in_child(run_probe, ProbeJob(network, _roi_zyx(network), args.overlap, args.device, onnx))
        print_probe(extra["probe"], network, args.device)
        print_plan_estimate(extra["probe"], measured, whole_roi(args))
    rows = []
    for config in measured:
        job = Job(config, root / "case", weights_dir(root, config.backend, config.members),
                  root / f"out-{config.approach}-{config.backend}-{config.members}", args.device)
        start = time.perf_counter()
        try:
            rows.append(row_from_dict(in_child(run_config, job)))
            print(f"  done {config.label}: {rows[-1].total_s:.1f} s (child wall {time.perf_counter() - start:.1f} s)",
                  flush=True)
        except Exception as exc:  # one failing configuration (e.g. an ONNX change in flight) must not end the run
            print(f"  FAILED {config.label}: {type(exc).__name__}: {exc}", flush=True)
    return rows, extra


def complete(rows: list[Row], extrapolated: list[Config], member_mb: dict[str, float]) -> list[Row]:
    """``rows`` plus the extrapolated configurations whose 1-member run succeeded, sorted for printing."""
    out = list(rows)
    for config in extrapolated:
        one = find(rows, config.approach, config.backend, 1)
        if one is not None:
            out.append(extrapolate(one, config.members, member_mb.get(config.backend, 0.0)))
    order = {"ours": 0, "template": 1}
    return sorted(out, key=lambda r: (order[r.config.approach], r.config.backend != "torch", r.config.members))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    network = QUICK_NETWORK if args.quick else FULL_NETWORK
    geometry, source = case_geometry(args)
    measured, extrapolated = plan(args)
    facts = machine_facts(args.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    print(f"SYNTHETIC case ({source}): CT {geometry.ct_size} @ {geometry.ct_spacing} mm, "
          f"PET {geometry.pet_size} @ {geometry.pet_spacing} mm")
    mode = ("whole-ROI pass" if whole_roi(args) else f"sliding window, overlap {args.overlap}") + (
        "" if args.whole_roi is not None else " (manifest default)")
    print(f"network: {network.name}, patch {network.patch}, RANDOM weights; ours: {mode}; template: full volumes -> "
          f"1 mm, crop around OUR brain-anchored centre, MONAI overlap {TEMPLATE_OVERLAP}, gaussian, sw_batch "
          f"{TEMPLATE_SW_BATCH}")
    print("measured: " + ", ".join(c.label for c in measured))
    print("extrapolated: " + (", ".join(c.label for c in extrapolated) or "none"), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        rows, extra = run_all(args, Path(tmp), measured)
    table = complete(rows, extrapolated, extra["member_mb"])
    print()
    print_table(table, args.device == "cuda")
    print("\nratios:")
    for line in ratio_lines(table, sorted(set(args.members) | {1, TARGET_MEMBERS})):
        print("  " + line)
    print("\ntargets (issue):")
    targets = target_lines(table)
    for line in targets:
        print("  " + line)
    if args.json:
        payload = {"machine": facts, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "case": {"source": source, **asdict(geometry)}, "network": asdict(network), **extra,
                   "rows": [asdict(r) | {"label": r.config.label, "total_s": r.total_s} for r in table],
                   "targets": targets}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nfigures saved to {args.json}")


if __name__ == "__main__":
    main()
