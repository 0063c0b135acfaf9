"""SYNTHETIC head-and-neck FDG-PET/CT phantom for tests, the bundled sample and benchmarks.

Nothing here is patient data. The phantom is defined analytically in physical (LPS, mm)
space, so it can be rendered on any grid, with any direction, at any resolution:
neck and head with skull, brain (high FDG uptake, as in real scans, so the ROI locator has
something to find), spine, airway, a primary tumour next to the midline airway (GTVp),
two lateral lymph nodes (GTVn) and parotid glands with sub-threshold uptake.

SYNTHETIC training datasets: :func:`make_training_phantom` varies the lesions per seed (GTVp
jittered around the midline primary site, 0 to 3 lateral GTVn nodes, lesion SUV and CT contrast,
a small global shift and the neck size), and :func:`write_training_dataset` writes such phantoms in
the HECKTOR 2025 training layout (``Task 1/<ID>/<ID>__CT.nii.gz``, ``__PT.nii.gz``, ``<ID>.nii.gz``
and ``HECKTOR_2025_Training_Task_1.csv``), some PETs in Bq/mL with a ``bqml_suv_factors.csv``.
SYNTHETIC Task 2/3 outcomes (:func:`synthetic_outcome`, :func:`write_outcome_table`) plant an image-outcome
relation in those phantoms for tests of the outcome network. They exist to test training pipelines: the IDs
look like HECKTOR's (``CHUM-001``) but every image is an analytic SYNTHETIC phantom, never patient data.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import image_on_grid
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP

__all__ = ["CENTER_IDS", "GTVN_SPHERES", "GTVP_SPHERE", "SAMPLE_EHR", "Phantom", "PhantomGeometry",
           "PhantomVariant", "SyntheticOutcome", "TrainingDataset", "TrainingPhantom", "make_phantom",
           "make_training_phantom", "sample_phantom_variant", "synthetic_outcome", "training_case_seed",
           "write_outcome_table", "write_platform_case", "write_training_dataset"]

SAMPLE_EHR = {
    "CenterID": 5,
    "Age": 56,
    "Gender": 1,
    "Tobacco Consumption": 0,
    "Alcohol Consumption": 1,
    "Performance Status": 0,
    "Treatment": 0,
    "M-stage": "M0",
}


@dataclass(frozen=True)
class PhantomGeometry:
    ct_size: tuple[int, int, int] = (120, 120, 110)  # x, y, z voxels
    ct_spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    pet_size: tuple[int, int, int] = (64, 64, 110)
    pet_spacing: tuple[float, float, float] = (4.0, 4.0, 3.0)
    z_bottom_mm: float = 0.0
    flip_ct_z: bool = False  # store the CT with a reversed z axis (direction (1,1,-1))
    # Any non-singular CT direction (row-major 3 x 3), e.g. a sheared one; the grid keeps its centre.
    ct_direction: tuple[float, ...] | None = None
    pet_scale: float = 1.0  # 1.0: SUV; e.g. 4000: a Bq/mL-like volume
    noise_seed: int = 0


@dataclass(frozen=True)
class Phantom:
    ct: sitk.Image
    pet: sitk.Image
    labels: sitk.Image  # reference mask on the CT grid (1 GTVp, 2 GTVn)


_GTVP_CENTRE = np.array([8.0, -10.0, 140.0])
_GTVP_RADIUS = 14.0
_NODES = ((np.array([-42.0, -5.0, 115.0]), 8.0), (np.array([44.0, 0.0, 95.0]), 6.5))
# The lesions as (centre (x, y, z) mm, radius mm): the analytic truth that tests measure against.
GTVP_SPHERE = (tuple(_GTVP_CENTRE.tolist()), _GTVP_RADIUS)
GTVN_SPHERES = tuple((tuple(c.tolist()), r) for c, r in _NODES)
_NECK_SEMI_AXES = (60.0, 55.0)  # x, y (mm) of the elliptic neck cylinder, which ends at z = 200 mm
_NECK_TOP_MM = 200.0
_PAROTIDS = ((np.array([50.0, 10.0, 165.0]), 12.0), (np.array([-50.0, 10.0, 165.0]), 12.0))
_CT_HU = {"body": 40, "spine": 650, "skull": 900, "brain": 35, "airway": -950, "parotid": 20, "gtvn": 45, "gtvp": 55}
_PET_SUV = {"body": 0.9, "spine": 1.3, "skull": 0.6, "brain": 8.0, "airway": 0.0, "parotid": 2.0, "gtvn": 7.0,
            "gtvp": 12.0}


@dataclass(frozen=True)
class _Scene:
    """Where the lesions are (patient frame, before ``shift``), the patient's shift and its neck size."""

    gtvp: tuple[np.ndarray, float] = (_GTVP_CENTRE, _GTVP_RADIUS)
    nodes: tuple[tuple[np.ndarray, float], ...] = _NODES
    shift: np.ndarray | None = None  # the whole patient moves by this (mm); None: not moved
    neck_semi_axes: tuple[float, float] = _NECK_SEMI_AXES


_DEFAULT_SCENE = _Scene()


def _squared_norm(d: np.ndarray) -> np.ndarray:
    """``(d ** 2).sum(axis=-1)`` for 3-vectors, summed in the same order (same bits), without the slow reduction."""
    return (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2]


def _ellipsoid(p: np.ndarray, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
    return _squared_norm((p - np.asarray(centre)) / np.asarray(semi))


def _sphere(
    p: np.ndarray, centre: np.ndarray, radius: float, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Points of ``p`` in the ball; ``bounds`` (min, max corner of a box holding every point) lets a ball
    clear of that box (by a margin far above rounding) skip the evaluation, which would be all False."""
    reach = radius + 1e-3
    if bounds is not None and (np.any(bounds[0] > centre + reach) or np.any(bounds[1] < centre - reach)):
        return np.zeros(p.shape[:-1], dtype=bool)
    return _squared_norm(p - centre) <= radius**2


def _grid_bounds(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of voxel centres ``p`` (z, y, x, 3) of a grid block: an affine image of an index box,
    so its 8 corners bound it."""
    corners = p[tuple(slice(None, None, max(n - 1, 1)) for n in p.shape[:-1])].reshape(-1, 3)
    return corners.min(axis=0), corners.max(axis=0)


def _cylinder(p: np.ndarray, cx: float, cy: float, radius: float, z0: float, z1: float) -> np.ndarray:
    return ((p[..., 0] - cx) ** 2 + (p[..., 1] - cy) ** 2 <= radius**2) & (p[..., 2] >= z0) & (p[..., 2] <= z1)


def _tissues(p: np.ndarray, scene: _Scene = _DEFAULT_SCENE) -> dict[str, np.ndarray]:
    """Tissue masks at the voxel centres ``p`` (z, y, x, 3) of a grid block (see :func:`_voxel_centres`)."""
    if scene.shift is not None:
        p = p - scene.shift
    bounds = _grid_bounds(p)
    semi_x, semi_y = scene.neck_semi_axes
    neck = (((p[..., 0] / semi_x) ** 2 + (p[..., 1] / semi_y) ** 2) <= 1.0) & (p[..., 2] <= _NECK_TOP_MM)
    head_r = _ellipsoid(p, (0.0, 10.0, 250.0), (75.0, 90.0, 95.0))
    brain = (head_r <= 0.8) & (p[..., 2] > 190.0)
    return {
        "body": neck | (head_r <= 1.0),
        "skull": (head_r <= 1.0) & (head_r > 0.8) & (p[..., 2] > 190.0),
        "brain": brain,
        "spine": _cylinder(p, 0.0, 35.0, 10.0, -1e9, 200.0),
        "airway": _cylinder(p, 0.0, -25.0, 8.0, 60.0, 170.0),
        "parotid": _sphere(p, *_PAROTIDS[0], bounds) | _sphere(p, *_PAROTIDS[1], bounds),
        "gtvp": _sphere(p, *scene.gtvp, bounds),
        "gtvn": (np.logical_or.reduce([_sphere(p, c, r, bounds) for c, r in scene.nodes]) if scene.nodes
                 else np.zeros(p.shape[:-1], dtype=bool)),
    }


def _paint_tissues(tissues: dict[str, np.ndarray], values: dict[str, float], background: float) -> np.ndarray:
    out = np.full(tissues["body"].shape, background, dtype=np.float32)
    for name in ("body", "spine", "skull", "brain", "airway", "parotid", "gtvn", "gtvp"):
        out[tissues[name]] = values[name]
    return out


def _paint(p: np.ndarray, values: dict[str, float], background: float, scene: _Scene = _DEFAULT_SCENE) -> np.ndarray:
    return _paint_tissues(_tissues(p, scene), values, background)


def _grid(
    size: tuple[int, int, int],
    spacing: tuple[float, float, float],
    z_bottom: float,
    flip_z: bool,
    direction: tuple[float, ...] | None = None,
) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(list(spacing))
    x0 = -(size[0] - 1) * spacing[0] / 2.0
    y0 = -(size[1] - 1) * spacing[1] / 2.0
    z_top = z_bottom + (size[2] - 1) * spacing[2]
    if direction is not None:
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        half_extent = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing)
        centre = np.array([0.0, 0.0, (z_bottom + z_top) / 2.0])
        image.SetDirection(matrix.flatten().tolist())
        image.SetOrigin((centre - matrix @ half_extent).tolist())
    elif flip_z:
        image.SetDirection([1, 0, 0, 0, 1, 0, 0, 0, -1])
        image.SetOrigin([x0, y0, z_top])
    else:
        image.SetOrigin([x0, y0, z_bottom])
    return image


def _voxel_centres(image: sitk.Image, z_slices: slice) -> np.ndarray:
    """(z, y, x, 3) physical coordinates of the voxel centres of slices ``z_slices``."""
    size = image.GetSize()
    z_index = np.arange(size[2])[z_slices]
    idx = np.stack(np.meshgrid(z_index, np.arange(size[1]), np.arange(size[0]), indexing="ij"), axis=-1)[..., ::-1]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ direction.T


def _render(
    image: sitk.Image, values: dict[str, float], background: float, slab: int = 8, scene: _Scene = _DEFAULT_SCENE
) -> np.ndarray:
    """Paint the phantom on ``image``'s grid a few slices at a time (bounded memory at 512 x 512)."""
    return _render_layers(image, ((values, background),), slab, scene)[0]


def _render_layers(
    image: sitk.Image, layers: Sequence[tuple[dict[str, float], float]], slab: int = 8, scene: _Scene = _DEFAULT_SCENE
) -> list[np.ndarray]:
    """Paint several value maps (e.g. HU and label codes) from ONE evaluation of the tissues per slab."""
    depth = image.GetSize()[2]
    slabs: list[list[np.ndarray]] = [[] for _ in layers]
    for z in range(0, depth, slab):
        tissues = _tissues(_voxel_centres(image, slice(z, min(z + slab, depth))), scene)
        for out, (values, background) in zip(slabs, layers, strict=True):
            out.append(_paint_tissues(tissues, values, background))
    return [np.concatenate(parts) for parts in slabs]


def _with_values(grid: sitk.Image, array: np.ndarray, pixel_type: int) -> sitk.Image:
    return sitk.Cast(image_on_grid(array, grid), pixel_type)


def _render_phantom(
    geometry: PhantomGeometry, scene: _Scene, hu: Mapping[str, float], suv: Mapping[str, float], noise_seed: int
) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """CT (int16 HU), PET (float32, SUV x ``geometry.pet_scale``) and labels (uint8, CT grid) of ``scene``."""
    ct_grid = _grid(geometry.ct_size, geometry.ct_spacing, geometry.z_bottom_mm, geometry.flip_ct_z,
                    geometry.ct_direction)
    lesion_codes = {k: 0.0 for k in hu} | {"gtvp": float(LABEL_GTVP), "gtvn": float(LABEL_GTVN)}
    ct_values, label_values = _render_layers(
        ct_grid, (({k: float(v) for k, v in hu.items()}, -1000.0), (lesion_codes, 0.0)), scene=scene
    )
    label_values = label_values.astype(np.uint8)

    pet_grid = _grid(geometry.pet_size, geometry.pet_spacing, geometry.z_bottom_mm + 1.0, False)
    pet_values = _render(pet_grid, dict(suv), 0.0, scene=scene)
    pet = sitk.SmoothingRecursiveGaussian(_with_values(pet_grid, pet_values, sitk.sitkFloat32), 2.5)
    rng = np.random.default_rng(noise_seed)
    noisy = sitk.GetArrayFromImage(pet)
    noisy = np.maximum(noisy * (1.0 + 0.05 * rng.standard_normal(noisy.shape)), 0.0) * geometry.pet_scale
    return (
        _with_values(ct_grid, np.round(ct_values), sitk.sitkInt16),
        _with_values(pet_grid, noisy.astype(np.float32), sitk.sitkFloat32),
        _with_values(ct_grid, label_values, sitk.sitkUInt8),
    )


def make_phantom(geometry: PhantomGeometry = PhantomGeometry()) -> Phantom:
    """Render the synthetic phantom on the CT and PET grids of ``geometry``."""
    ct, pet, labels = _render_phantom(geometry, _DEFAULT_SCENE, _CT_HU, _PET_SUV, geometry.noise_seed)
    return Phantom(ct=ct, pet=pet, labels=labels)


def write_platform_case(
    phantom: Phantom, input_dir: Path, ehr: dict | None = SAMPLE_EHR, name: str = "phantom"
) -> None:
    """Write ``phantom`` in the Grand-Challenge input layout (compressed .mha)."""
    for folder, image in (("ct", phantom.ct), ("pet", phantom.pet)):
        target = Path(input_dir) / "images" / folder
        target.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(target / f"{name}.mha"), useCompression=True)
    if ehr is not None:
        (Path(input_dir) / "ehr.json").write_text(json.dumps(ehr, indent=2))


# --------------------------------------------------------------------------- SYNTHETIC training datasets

Sphere = tuple[tuple[float, float, float], float]  # (centre (x, y, z) mm, radius mm)

# HECKTOR 2025 training CenterIDs (docs/interface.md); other centre names get 9, 10, ... in order of appearance.
CENTER_IDS: Mapping[str, int] = MappingProxyType(
    {"CHUM": 1, "CHUP": 2, "CHUS": 3, "CHUV": 4, "MDA": 5, "HGJ": 6, "HMR": 7, "USZ": 8}
)
_SEED_TAG = 0x4845_434B  # "HECK": keeps the variant stream apart from other uses of the same integer seed
_LESION_GAP_MM = 6.0  # > the CT voxel diagonal (4.1 mm), so lesions never touch as 26-connected components
_NECK_MARGIN_MM = 3.0
_NODE_ABS_X_MM = (30.0, 50.0)
_NODE_Y_MM = (-22.0, 12.0)
_NODE_Z_MM = (65.0, 150.0)
# Involved nodes of 7-11 mm radius at SUV 8-14: after the PET's blur and 4 mm voxels a 5 mm node of SUV 5 peaked
# at SUV ~2.5, indistinguishable from muscle once the PET is z-scored, and a small network trained for a CPU
# budget never learned GTVn (the learning check in test/test_training_learning.py).
_NODE_RADIUS_MM = (7.0, 11.0)
_GTVP_RADIUS_MM = (9.0, 16.0)
_GTVP_JITTER_MM = 10.0
_BQML_FACTOR_RANGE = (2.5e-4, 6.0e-4)
_F18_HALF_LIFE_S = 6586.2
TASK1_CSV_NAME = "HECKTOR_2025_Training_Task_1.csv"
BQML_CSV_NAME = "bqml_suv_factors.csv"
_BQML_COLUMNS = ("pid", "units", "patient_weight_kg", "radiopharmaceutical", "radionuclide_total_dose_bq",
                 "radionuclide_half_life_sec", "elapsed_seconds_injection_to_scan", "decay_corrected_dose_at_scan_bq",
                 "dose_for_suv_bq", "bqml_to_suvbw_factor")


@dataclass(frozen=True)
class PhantomVariant:
    """What one seed of :func:`make_training_phantom` draws (all lesion geometry in world LPS mm, after ``shift``)."""

    seed: int
    gtvp: Sphere
    gtvn: tuple[Sphere, ...]  # 0 to 3 lateral nodes, pairwise separated and apart from the GTVp
    gtvp_suv: float
    gtvn_suv: float
    gtvp_hu: int
    gtvn_hu: int
    shift_mm: tuple[float, float, float]  # of the whole patient
    neck_semi_axes_mm: tuple[float, float]
    noise_seed: int


@dataclass(frozen=True)
class TrainingPhantom(Phantom):
    """A SYNTHETIC phantom of :func:`make_training_phantom` with the variant it was drawn from (PET in SUV)."""

    variant: PhantomVariant


@dataclass(frozen=True)
class TrainingDataset:
    """A SYNTHETIC dataset in the HECKTOR 2025 training layout, as written by :func:`write_training_dataset`."""

    root: Path
    task1_dir: Path
    case_ids: tuple[str, ...]
    centre_of: Mapping[str, str]
    bqml_factors_csv: Path
    bqml_cases: tuple[str, ...]
    # The make_training_phantom seed of each case: make_training_phantom(seed_of[id], geometry) renders it again.
    seed_of: Mapping[str, int] = field(default_factory=dict)


def _inside_neck(centre: np.ndarray, radius: float, semi_axes: tuple[float, float]) -> bool:
    """Whether the sphere (patient frame) lies in the neck cylinder with a margin (checked on its xy outline)."""
    reach = radius + _NECK_MARGIN_MM
    angles = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    x = centre[0] + reach * np.cos(angles)
    y = centre[1] + reach * np.sin(angles)
    in_ellipse = bool(np.all((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 <= 1.0))
    return in_ellipse and centre[2] + reach <= _NECK_TOP_MM


def _apart(centre: np.ndarray, radius: float, others: Sequence[tuple[np.ndarray, float]], gap: float) -> bool:
    return all(np.linalg.norm(centre - c) >= radius + r + gap for c, r in others)


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SEED_TAG]))


def _draw_scene(seed: int) -> tuple[_Scene, PhantomVariant]:
    rng = _rng(seed)
    shift = np.round(rng.uniform([-6.0, -6.0, -9.0], [6.0, 6.0, 9.0]), 1)
    scale = rng.uniform(0.93, 1.08, size=2)
    semi = (round(_NECK_SEMI_AXES[0] * float(scale[0]), 1), round(_NECK_SEMI_AXES[1] * float(scale[1]), 1))
    while True:  # GTVp: jittered around the midline primary site, within _GTVP_JITTER_MM of it
        offset = rng.uniform(-_GTVP_JITTER_MM, _GTVP_JITTER_MM, size=3)
        gtvp_radius = round(float(rng.uniform(*_GTVP_RADIUS_MM)), 1)
        gtvp_centre = np.round(_GTVP_CENTRE + offset, 1)
        if np.linalg.norm(gtvp_centre - _GTVP_CENTRE) <= _GTVP_JITTER_MM and _inside_neck(gtvp_centre, gtvp_radius,
                                                                                            semi):
            break
    wanted = int(rng.integers(0, 4))
    obstacles: list[tuple[np.ndarray, float]] = [(gtvp_centre, gtvp_radius)]
    nodes: list[tuple[np.ndarray, float]] = []
    for _ in range(200 * max(wanted, 1)):
        if len(nodes) == wanted:
            break
        side = 1.0 if rng.random() < 0.5 else -1.0
        centre = np.round(np.array([side * rng.uniform(*_NODE_ABS_X_MM), rng.uniform(*_NODE_Y_MM),
                                    rng.uniform(*_NODE_Z_MM)]), 1)
        radius = round(float(rng.uniform(*_NODE_RADIUS_MM)), 1)
        if (_inside_neck(centre, radius, semi) and _apart(centre, radius, obstacles + nodes, _LESION_GAP_MM)
                and _apart(centre, radius, _PAROTIDS, 2.0)):
            nodes.append((centre, radius))
    scene = _Scene(gtvp=(gtvp_centre, gtvp_radius), nodes=tuple(nodes), shift=shift, neck_semi_axes=semi)

    def world(c: np.ndarray, r: float) -> Sphere:
        x, y, z = (round(float(v), 3) for v in c + shift)
        return (x, y, z), float(r)

    variant = PhantomVariant(
        seed=int(seed),
        gtvp=world(gtvp_centre, gtvp_radius),
        gtvn=tuple(world(c, r) for c, r in nodes),
        gtvp_suv=round(float(rng.uniform(8.0, 16.0)), 2),
        gtvn_suv=round(float(rng.uniform(8.0, 14.0)), 2),
        gtvp_hu=int(rng.integers(50, 66)),
        gtvn_hu=int(rng.integers(45, 61)),
        shift_mm=(float(shift[0]), float(shift[1]), float(shift[2])),
        neck_semi_axes_mm=semi,
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )
    return scene, variant


def sample_phantom_variant(seed: int) -> PhantomVariant:
    """The lesions, values and shift that :func:`make_training_phantom` draws for ``seed`` (no rendering)."""
    return _draw_scene(seed)[1]


def make_training_phantom(seed: int, geometry: PhantomGeometry | None = None) -> TrainingPhantom:
    """A SYNTHETIC training phantom: :func:`make_phantom`'s anatomy with per-seed lesions, uptake and position.

    Per seed (non-negative integer, deterministic): the GTVp centre within 10 mm of the midline primary site,
    radius 9-16 mm, SUV 8-16, HU 50-65; 0-3 GTVn nodes, each 30-50 mm lateral (either side) at a random
    neck height (z 65-150 mm), radius 7-11 mm, one SUV 8-14 and HU 45-60 for all of them; the whole patient
    shifted by up to 6 mm (x, y) and 9 mm (z); the neck's semi-axes scaled by 0.93-1.08. Lesions lie in the
    neck and are at least 6 mm apart. Labels are the lesion spheres on the CT grid (1 GTVp, 2 GTVn). The PET
    noise is drawn from the seed (``geometry.noise_seed`` is ignored); ``geometry.pet_scale`` still applies.
    """
    geometry = PhantomGeometry() if geometry is None else geometry
    scene, variant = _draw_scene(seed)
    hu = dict(_CT_HU) | {"gtvp": variant.gtvp_hu, "gtvn": variant.gtvn_hu}
    suv = dict(_PET_SUV) | {"gtvp": variant.gtvp_suv, "gtvn": variant.gtvn_suv}
    ct, pet, labels = _render_phantom(geometry, scene, hu, suv, variant.noise_seed)
    return TrainingPhantom(ct=ct, pet=pet, labels=labels, variant=variant)


def training_case_seed(dataset_seed: int, index: int) -> int:
    """The :func:`make_training_phantom` seed of case ``index`` (0-based) of a dataset written with ``dataset_seed``."""
    if dataset_seed < 0 or index < 0:
        raise ValueError(f"dataset seed and index must be non-negative, got {dataset_seed}, {index}")
    return int(np.random.SeedSequence([int(dataset_seed), int(index), _SEED_TAG]).generate_state(1)[0])


def _center_ids(centres: Sequence[str]) -> dict[str, int]:
    ids, next_id = {}, max(CENTER_IDS.values()) + 1
    for centre in centres:
        if centre in ids:
            continue
        if centre in CENTER_IDS:
            ids[centre] = CENTER_IDS[centre]
        else:
            ids[centre], next_id = next_id, next_id + 1
    return ids


def _bqml_row(case_id: str, rng: np.random.Generator) -> tuple[dict[str, str], float]:
    """A plausible SYNTHETIC row of the Bq/mL table whose columns agree (factor = weight g / decayed dose)."""
    factor = float(f"{rng.uniform(*_BQML_FACTOR_RANGE):.6g}")
    weight_kg = round(float(rng.uniform(55.0, 100.0)), 1)
    elapsed_s = int(rng.integers(3000, 5400))
    dose_at_scan = weight_kg * 1000.0 / factor
    injected = dose_at_scan / 2.0 ** (-elapsed_s / _F18_HALF_LIFE_S)
    row = {
        "pid": case_id,
        "units": "BQML",
        "patient_weight_kg": f"{weight_kg:g}",
        "radiopharmaceutical": "Fluorodeoxyglucose (SYNTHETIC phantom)",
        "radionuclide_total_dose_bq": f"{injected:.1f}",
        "radionuclide_half_life_sec": f"{_F18_HALF_LIFE_S}",
        "elapsed_seconds_injection_to_scan": str(elapsed_s),
        "decay_corrected_dose_at_scan_bq": f"{dose_at_scan:.1f}",
        "dose_for_suv_bq": f"{dose_at_scan:.1f}",
        "bqml_to_suvbw_factor": repr(factor),
    }
    return row, factor


_README = """SYNTHETIC PHANTOMS - NOT PATIENT DATA

Written by hecktor.io.phantom.write_training_dataset (dataset seed {seed}, {n} cases) for tests of a
segmentation training pipeline. The folder follows the HECKTOR 2025 training layout
(Task 1/<ID>/<ID>__CT.nii.gz, <ID>__PT.nii.gz, <ID>.nii.gz with labels 1 = GTVp, 2 = GTVn, and
Task 1/{task1_csv}) and the IDs look like HECKTOR's, but every image is an analytic phantom.
PETs are in SUV except the cases listed in {bqml_csv} (values in Bq/mL-like units; SUV = value x
bqml_to_suvbw_factor). synthetic_lesions.json lists each case's planted lesions.
"""


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_training_dataset(
    root: Path,
    n_cases: int,
    seed: int = 0,
    centres: Sequence[str] = ("CHUM", "CHUS", "HGJ", "MDA"),
    bqml_every: int = 4,
    geometry: PhantomGeometry | None = None,
) -> TrainingDataset:
    """Write ``n_cases`` SYNTHETIC phantoms in the HECKTOR 2025 training layout under ``root``.

    Case ``i`` (0-based) belongs to ``centres[i % len(centres)]`` and is numbered within its centre
    (``CHUM-001``, ``CHUS-001``, ..., ``CHUM-002``); its phantom is ``make_training_phantom(
    training_case_seed(seed, i), geometry)``, so a case does not depend on ``n_cases``. Every
    ``bqml_every``-th case (the 4th, 8th, ... for 4; none for 0) stores its PET divided by a per-case
    factor in 2.5e-4..6e-4, listed in ``root/bqml_suv_factors.csv`` (the columns of the HECKTOR
    Bq/mL table; ``pid`` and ``bqml_to_suvbw_factor`` exact, the others consistent fillers). Also
    written: ``Task 1/HECKTOR_2025_Training_Task_1.csv`` (``PatientID``, ``CenterID`` as the HECKTOR
    number, ``Synthetic``), ``README_SYNTHETIC.txt`` and ``synthetic_lesions.json``. Deterministic for a seed.
    """
    geometry = PhantomGeometry() if geometry is None else geometry
    if geometry.pet_scale != 1.0:
        raise ValueError("write_training_dataset writes SUV (and its own Bq/mL cases): geometry.pet_scale must be 1")
    if n_cases < 0 or bqml_every < 0 or not centres:
        raise ValueError(f"need n_cases >= 0, bqml_every >= 0 and at least one centre (got {n_cases}, "
                         f"{bqml_every}, {list(centres)})")
    if any(not c or "-" in c or "/" in c or c.strip() != c for c in centres):
        raise ValueError(f"centre names must be non-empty, without '-', '/' or surrounding blanks: {list(centres)}")
    root = Path(root)
    task1 = root / "Task 1"
    task1.mkdir(parents=True, exist_ok=True)
    center_ids = _center_ids(centres)
    factor_rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SEED_TAG, 1]))
    counts: dict[str, int] = {}
    case_ids, bqml_cases, centre_of, seed_of = [], [], {}, {}
    task1_rows, bqml_rows, lesions = [], [], {}
    for index in range(n_cases):
        centre = centres[index % len(centres)]
        counts[centre] = counts.get(centre, 0) + 1
        case_id = f"{centre}-{counts[centre]:03d}"
        case_seed = training_case_seed(seed, index)
        phantom = make_training_phantom(case_seed, geometry)
        pet = phantom.pet
        factor = None
        if bqml_every and (index + 1) % bqml_every == 0:
            row, factor = _bqml_row(case_id, factor_rng)
            bqml_rows.append(row)
            bqml_cases.append(case_id)
            bqml = (sitk.GetArrayViewFromImage(pet).astype(np.float64) / factor).astype(np.float32)
            pet = _with_values(pet, bqml, sitk.sitkFloat32)
        folder = task1 / case_id
        folder.mkdir(exist_ok=True)
        sitk.WriteImage(phantom.ct, str(folder / f"{case_id}__CT.nii.gz"), useCompression=True)
        sitk.WriteImage(pet, str(folder / f"{case_id}__PT.nii.gz"), useCompression=True)
        sitk.WriteImage(phantom.labels, str(folder / f"{case_id}.nii.gz"), useCompression=True)
        case_ids.append(case_id)
        centre_of[case_id] = centre
        seed_of[case_id] = case_seed
        task1_rows.append({"PatientID": case_id, "CenterID": center_ids[centre], "Synthetic": 1})
        variant = phantom.variant
        lesions[case_id] = {
            "phantom_seed": case_seed, "centre": centre, "gtvp": variant.gtvp, "gtvn": variant.gtvn,
            "gtvp_suv": variant.gtvp_suv, "gtvn_suv": variant.gtvn_suv, "shift_mm": variant.shift_mm,
            "pet_units": "BQML" if factor is not None else "SUV", "bqml_to_suvbw_factor": factor,
        }
    _write_csv(task1 / TASK1_CSV_NAME, ("PatientID", "CenterID", "Synthetic"), task1_rows)
    bqml_csv = root / BQML_CSV_NAME
    _write_csv(bqml_csv, _BQML_COLUMNS, bqml_rows)
    (root / "README_SYNTHETIC.txt").write_text(
        _README.format(seed=seed, n=n_cases, task1_csv=TASK1_CSV_NAME, bqml_csv=BQML_CSV_NAME))
    (root / "synthetic_lesions.json").write_text(
        json.dumps({"synthetic": True, "dataset_seed": seed, "cases": lesions}, indent=1))
    return TrainingDataset(
        root=root,
        task1_dir=task1,
        case_ids=tuple(case_ids),
        centre_of=MappingProxyType(centre_of),
        bqml_factors_csv=bqml_csv,
        bqml_cases=tuple(bqml_cases),
        seed_of=MappingProxyType(seed_of),
    )


# --------------------------------------------------------------------------- SYNTHETIC Task 2/3 outcomes

TASK2_CSV_NAME = "HECKTOR_2025_Training_Task_2_SYNTHETIC.csv"
_OUTCOME_TAG = 0x5246_5321  # "RFS!": the outcome stream of a seed, apart from its lesion stream
_RFS_MEDIAN_DAYS = 1500.0
_CENSOR_DAYS = (300.0, 3500.0)


@dataclass(frozen=True)
class SyntheticOutcome:
    """SYNTHETIC Task 2/3 labels of one training phantom, with a planted image-outcome relation.

    HPV: ``logit = 2 (log(1 + GTVn mL) - 1.3) - 2 (log(1 + GTVp mL) - 2.2) + N(0, 0.5)``, positive when > 0:
    HPV-positive phantoms have bigger nodes and a smaller primary. RFS: exponential with median 1500 days at
    log-hazard ratio 0, ``log HR = 2 (GTVp SUV - 12) / 2.3 + 2 (log(1 + GTVp + GTVn mL) - 2.6)``: more uptake and
    more tumour relapse earlier; censored uniformly in 300-3500 days. The clinical fields are noise, unrelated
    to the outcome. Volumes are the analytic spheres'.
    """

    rfs_days: float
    relapse: int
    hpv_positive: int
    hpv_logit: float  # the planted logit before thresholding (noise included)
    log_hazard_ratio: float
    clinical: Mapping[str, object]  # ehr.json-like fields (Age, Gender, ...): SYNTHETIC noise


def _ball_ml(radius_mm: float) -> float:
    return 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0


def synthetic_outcome(variant: PhantomVariant) -> SyntheticOutcome:
    """The SYNTHETIC outcome planted for ``variant`` (deterministic per seed); see :class:`SyntheticOutcome`."""
    rng = np.random.default_rng(np.random.SeedSequence([int(variant.seed), _OUTCOME_TAG]))
    gtvp_ml = _ball_ml(variant.gtvp[1])
    gtvn_ml = sum(_ball_ml(r) for _, r in variant.gtvn)
    hpv_logit = 2.0 * (np.log1p(gtvn_ml) - 1.3) - 2.0 * (np.log1p(gtvp_ml) - 2.2) + 0.5 * rng.standard_normal()
    log_hr = 2.0 * (variant.gtvp_suv - 12.0) / 2.3 + 2.0 * (np.log1p(gtvp_ml + gtvn_ml) - 2.6)
    event_days = -np.log(rng.uniform()) / (np.log(2.0) / _RFS_MEDIAN_DAYS * np.exp(log_hr))
    censor_days = rng.uniform(*_CENSOR_DAYS)
    clinical = {
        "Age": int(rng.integers(40, 85)),
        "Gender": int(rng.random() < 0.8),
        "Tobacco Consumption": int(rng.random() < 0.5),
        "Alcohol Consumption": int(rng.random() < 0.5),
        "Performance Status": int(rng.integers(0, 3)),
        "Treatment": int(rng.random() < 0.7),
        "M-stage": "M0",
    }
    return SyntheticOutcome(
        rfs_days=float(round(min(event_days, censor_days))),
        relapse=int(event_days <= censor_days),
        hpv_positive=int(hpv_logit > 0.0),
        hpv_logit=float(hpv_logit),
        log_hazard_ratio=float(log_hr),
        clinical=MappingProxyType(clinical),
    )


def write_outcome_table(dataset: TrainingDataset) -> Path:
    """Write ``root/HECKTOR_2025_Training_Task_2_SYNTHETIC.csv`` for a dataset of :func:`write_training_dataset`:
    the HECKTOR 2025 Task 2 columns (PatientID, CenterID, Age, Gender, Tobacco/Alcohol Consumption, Performance
    Status, Treatment, M-stage, HPV Status, Relapse, RFS) from :func:`synthetic_outcome`, plus ``Synthetic`` = 1."""
    center_ids = _center_ids(list(dict.fromkeys(dataset.centre_of[c] for c in dataset.case_ids)))
    rows = []
    for case_id in dataset.case_ids:
        outcome = synthetic_outcome(sample_phantom_variant(dataset.seed_of[case_id]))
        rows.append({"PatientID": case_id, "CenterID": center_ids[dataset.centre_of[case_id]], **outcome.clinical,
                     "HPV Status": outcome.hpv_positive, "Relapse": outcome.relapse, "RFS": outcome.rfs_days,
                     "Synthetic": 1})
    columns = ["PatientID", "CenterID", "Age", "Gender", "Tobacco Consumption", "Alcohol Consumption",
               "Performance Status", "Treatment", "M-stage", "HPV Status", "Relapse", "RFS", "Synthetic"]
    path = dataset.root / TASK2_CSV_NAME
    _write_csv(path, columns, rows)
    return path
