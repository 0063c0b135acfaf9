"""Geometry helpers: grids, physical extents and resampling with an explicit reference grid.

Rules (see docs/architecture): never assume an identity direction; every resample names its
reference grid; numpy arrays are (z, y, x) while SimpleITK indices are (x, y, z).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

__all__ = [
    "INTERPOLATORS",
    "continuous_index_of",
    "direction_matrix",
    "image_on_grid",
    "make_grid",
    "physical_coordinate_field",
    "physical_corners",
    "resample_to_grid",
    "same_geometry",
    "sub_grid",
]

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}


def direction_matrix(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)


def physical_corners(image: sitk.Image) -> np.ndarray:
    """(8, 3) physical points of the outer voxel faces (half a voxel beyond the centres)."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in size])))
    return continuous_index_to_physical(image, corners)


def continuous_index_to_physical(image: sitk.Image, index_xyz: np.ndarray) -> np.ndarray:
    direction = direction_matrix(image)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    return origin + (np.atleast_2d(index_xyz) * spacing) @ direction.T


def continuous_index_of(image: sitk.Image, points_xyz: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) indices of physical points in ``image``'s grid."""
    direction = direction_matrix(image)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    return ((np.atleast_2d(points_xyz) - origin) @ direction) / spacing


def make_grid(
    center_xyz: np.ndarray, size_xyz: tuple[int, int, int], spacing: float, direction: np.ndarray
) -> sitk.Image:
    """An empty uint8 image whose voxel centres are centred on ``center_xyz`` (physical mm)."""
    half_extent = (np.asarray(size_xyz, dtype=np.float64) - 1.0) / 2.0 * spacing
    origin = np.asarray(center_xyz, dtype=np.float64) - direction @ half_extent
    grid = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def sub_grid(grid: sitk.Image, start_xyz: np.ndarray, stop_xyz: np.ndarray) -> sitk.Image:
    """The part of ``grid`` from integer index ``start`` (inclusive) to ``stop`` (exclusive)."""
    start = np.asarray(start_xyz, dtype=int)
    size = np.asarray(stop_xyz, dtype=int) - start
    if (size <= 0).any():
        raise ValueError(f"empty sub-grid {start} -> {stop_xyz}")
    out = sitk.Image([int(s) for s in size], grid.GetPixelID())
    out.SetSpacing(grid.GetSpacing())
    out.SetDirection(grid.GetDirection())
    out.SetOrigin(grid.TransformIndexToPhysicalPoint([int(i) for i in start]))
    return out


def image_on_grid(values: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A (z, y, x) array as an image with ``grid``'s origin, spacing and direction."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(values))
    image.CopyInformation(grid)
    return image


def resample_to_grid(image: sitk.Image, grid: sitk.Image, interpolator: str, default_value: float) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (the reference) as float32."""
    return sitk.Resample(
        image, grid, sitk.Transform(), INTERPOLATORS[interpolator], float(default_value), sitk.sitkFloat32
    )


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def physical_coordinate_field(image: sitk.Image, axis: int) -> np.ndarray:
    """Physical coordinate ``axis`` (0=x, 1=y, 2=z) of every voxel centre, as a (z, y, x) array."""
    direction = direction_matrix(image)
    spacing = np.asarray(image.GetSpacing())
    size = image.GetSize()
    steps = [direction[axis, a] * spacing[a] * np.arange(size[a]) for a in range(3)]
    return image.GetOrigin()[axis] + steps[2][:, None, None] + steps[1][None, :, None] + steps[0][None, None, :]
