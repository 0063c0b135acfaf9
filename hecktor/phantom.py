"""SYNTHETIC head-and-neck FDG-PET/CT phantom for tests, the bundled sample and benchmarks.

Nothing here is patient data. The phantom is defined analytically in physical (LPS, mm)
space, so it can be rendered on any grid, with any direction, at any resolution:
neck and head with skull, brain (high FDG uptake, as in real scans, so the ROI locator has
something to find), spine, airway, a primary tumour next to the midline airway (GTVp),
two lateral lymph nodes (GTVn) and parotid glands with sub-threshold uptake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hecktor.geometry import image_on_grid
from hecktor.types import LABEL_GTVN, LABEL_GTVP

__all__ = ["GTVN_SPHERES", "GTVP_SPHERE", "SAMPLE_EHR", "Phantom", "PhantomGeometry", "make_phantom",
           "write_platform_case"]

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


def _ellipsoid(p: np.ndarray, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
    return (((p - np.asarray(centre)) / np.asarray(semi)) ** 2).sum(axis=-1)


def _sphere(p: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return ((p - centre) ** 2).sum(axis=-1) <= radius**2


def _cylinder(p: np.ndarray, cx: float, cy: float, radius: float, z0: float, z1: float) -> np.ndarray:
    return ((p[..., 0] - cx) ** 2 + (p[..., 1] - cy) ** 2 <= radius**2) & (p[..., 2] >= z0) & (p[..., 2] <= z1)


def _tissues(p: np.ndarray) -> dict[str, np.ndarray]:
    neck = (((p[..., 0] / 60.0) ** 2 + (p[..., 1] / 55.0) ** 2) <= 1.0) & (p[..., 2] <= 200.0)
    head_r = _ellipsoid(p, (0.0, 10.0, 250.0), (75.0, 90.0, 95.0))
    brain = (head_r <= 0.8) & (p[..., 2] > 190.0)
    return {
        "body": neck | (head_r <= 1.0),
        "skull": (head_r <= 1.0) & (head_r > 0.8) & (p[..., 2] > 190.0),
        "brain": brain,
        "spine": _cylinder(p, 0.0, 35.0, 10.0, -1e9, 200.0),
        "airway": _cylinder(p, 0.0, -25.0, 8.0, 60.0, 170.0),
        "parotid": _sphere(p, np.array([50.0, 10.0, 165.0]), 12.0) | _sphere(p, np.array([-50.0, 10.0, 165.0]), 12.0),
        "gtvp": _sphere(p, _GTVP_CENTRE, _GTVP_RADIUS),
        "gtvn": np.logical_or.reduce([_sphere(p, c, r) for c, r in _NODES]),
    }


def _paint(p: np.ndarray, values: dict[str, float], background: float) -> np.ndarray:
    tissues = _tissues(p)
    out = np.full(p.shape[:-1], background, dtype=np.float32)
    for name in ("body", "spine", "skull", "brain", "airway", "parotid", "gtvn", "gtvp"):
        out[tissues[name]] = values[name]
    return out


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


def _render(image: sitk.Image, values: dict[str, float], background: float, slab: int = 8) -> np.ndarray:
    """Paint the phantom on ``image``'s grid a few slices at a time (bounded memory at 512 x 512)."""
    depth = image.GetSize()[2]
    return np.concatenate([
        _paint(_voxel_centres(image, slice(z, min(z + slab, depth))), values, background) for z in range(0, depth, slab)
    ])


def _with_values(grid: sitk.Image, array: np.ndarray, pixel_type: int) -> sitk.Image:
    return sitk.Cast(image_on_grid(array, grid), pixel_type)


def make_phantom(geometry: PhantomGeometry = PhantomGeometry()) -> Phantom:
    """Render the synthetic phantom on the CT and PET grids of ``geometry``."""
    ct_grid = _grid(geometry.ct_size, geometry.ct_spacing, geometry.z_bottom_mm, geometry.flip_ct_z,
                    geometry.ct_direction)
    hu = {"body": 40, "spine": 650, "skull": 900, "brain": 35, "airway": -950, "parotid": 20, "gtvn": 45, "gtvp": 55}
    ct_values = _render(ct_grid, {k: float(v) for k, v in hu.items()}, -1000.0)
    lesion_codes = {k: 0.0 for k in hu} | {"gtvp": float(LABEL_GTVP), "gtvn": float(LABEL_GTVN)}
    label_values = _render(ct_grid, lesion_codes, 0.0).astype(np.uint8)

    pet_grid = _grid(geometry.pet_size, geometry.pet_spacing, geometry.z_bottom_mm + 1.0, False)
    suv = {"body": 0.9, "spine": 1.3, "skull": 0.6, "brain": 8.0, "airway": 0.0, "parotid": 2.0, "gtvn": 7.0,
           "gtvp": 12.0}
    pet_values = _render(pet_grid, suv, 0.0)
    pet = sitk.SmoothingRecursiveGaussian(_with_values(pet_grid, pet_values, sitk.sitkFloat32), 2.5)
    rng = np.random.default_rng(geometry.noise_seed)
    noisy = sitk.GetArrayFromImage(pet)
    noisy = np.maximum(noisy * (1.0 + 0.05 * rng.standard_normal(noisy.shape)), 0.0) * geometry.pet_scale
    return Phantom(
        ct=_with_values(ct_grid, np.round(ct_values), sitk.sitkInt16),
        pet=_with_values(pet_grid, noisy.astype(np.float32), sitk.sitkFloat32),
        labels=_with_values(ct_grid, label_values, sitk.sitkUInt8),
    )


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
