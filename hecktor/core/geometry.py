"""Geometry helpers: grids, the patient frame, physical extents and resampling with an explicit reference grid.

Rules (see docs/architecture): never assume an identity direction; every resample names its
reference grid; numpy arrays are (z, y, x) while SimpleITK indices are (x, y, z).

Direction matrices are handled in general (any non-singular matrix, sheared ones included):
index -> physical is ``origin + D @ diag(spacing) @ index`` and physical -> index uses the true
inverse of that matrix, never its transpose. A voxel's volume is ``|det(D)| * prod(spacing)``.

The patient frame
-----------------
Anatomical notions (cranial, midline, the ROI box) are measured in the *patient frame*: the CT's
direction made orthonormal (its polar factor) and then stripped of axis flips and permutations,
i.e. the rotation closest to identity among the CT's 48 signed axis orderings. For the usual
axis-aligned scan it is the identity (LPS): superior is +z whatever order the slices are stored
in. Because the frame follows the CT, storing a case with any axis reversed, or rotating the whole
scene rigidly, leaves every frame coordinate unchanged; that is what makes the output invariant
to how a case is stored (tested in ``test/test_invariance.py``).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

__all__ = [
    "INTERPOLATORS",
    "continuous_index_of",
    "continuous_index_to_physical",
    "direction_matrix",
    "direction_problem",
    "frame_bounds",
    "frame_coordinates_of_indices",
    "image_on_grid",
    "index_box_in_frame_box",
    "make_grid",
    "orthonormality_error",
    "patient_frame",
    "physical_corners",
    "resample_to_grid",
    "same_geometry",
    "sub_grid",
    "voxel_volume_ml",
    "voxels_in_frame_box",
]

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}

# Directions whose (column-normalised) determinant is below this are too close to singular to trust:
# axes less than ~6 degrees apart.
MIN_ABS_DETERMINANT = 0.1
# Slack on voxel-centre membership tests, in voxels: absorbs floating-point noise only.
_INDEX_EPS = 1e-6
# Voxels per chunk when a per-voxel test cannot be reduced to an index box (oblique images).
_CHUNK_VOXELS = 1 << 22

_SIGNED_PERMUTATIONS = tuple(
    np.eye(3)[:, list(perm)] * np.asarray(signs)
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1.0, -1.0), repeat=3)
)


def direction_matrix(image: sitk.Image) -> np.ndarray:
    """(3, 3) matrix whose columns are the image's x, y, z index axes in physical space."""
    return np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)


def _index_to_physical_matrix(image: sitk.Image) -> np.ndarray:
    return direction_matrix(image) * np.asarray(image.GetSpacing(), dtype=np.float64)


def direction_problem(direction: np.ndarray) -> str | None:
    """Why a direction matrix cannot be used (non-finite, near-singular), or ``None`` when it can."""
    if not np.all(np.isfinite(direction)):
        return "has non-finite entries"
    norms = np.linalg.norm(direction, axis=0)
    if np.any(norms < 1e-6):
        return "has a zero column"
    determinant = abs(float(np.linalg.det(direction / norms)))
    if determinant < MIN_ABS_DETERMINANT:
        return f"is nearly singular (|det| of its normalised columns = {determinant:.3g})"
    return None


def orthonormality_error(direction: np.ndarray) -> float:
    """max |D^T D - I|: 0 for a rotation or reflection, larger for sheared or scaled directions."""
    return float(np.abs(direction.T @ direction - np.eye(3)).max())


def patient_frame(direction: np.ndarray) -> np.ndarray:
    """The rotation closest to identity among the signed axis orderings of ``direction``'s polar factor.

    Columns are the frame's x, y, z axes in physical space; ``frame.T @ p`` are a point's frame
    coordinates. See the module docstring.
    """
    u, _, vt = np.linalg.svd(direction)
    rotation = u @ vt
    # A proper rotation is always within ~63 degrees of one of the cube's 24 rotations, so the best
    # candidate has trace > 1.9, while improper ones have trace <= 1: the result has det +1.
    return max((rotation @ p for p in _SIGNED_PERMUTATIONS), key=lambda m: float(np.trace(m)))


def continuous_index_to_physical(image: sitk.Image, index_xyz: np.ndarray) -> np.ndarray:
    """Physical points of continuous (x, y, z) indices; (n, 3) -> (n, 3)."""
    return np.asarray(image.GetOrigin()) + np.atleast_2d(index_xyz) @ _index_to_physical_matrix(image).T


def continuous_index_of(image: sitk.Image, points_xyz: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) indices of physical points in ``image``'s grid (general directions)."""
    offsets = np.atleast_2d(points_xyz) - np.asarray(image.GetOrigin())
    return np.linalg.solve(_index_to_physical_matrix(image), offsets.T).T


def physical_corners(image: sitk.Image) -> np.ndarray:
    """(8, 3) physical points of the outer voxel faces (half a voxel beyond the centres)."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in size])))
    return continuous_index_to_physical(image, corners)


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in mL, correct for sheared directions too."""
    return abs(float(np.linalg.det(_index_to_physical_matrix(image)))) / 1000.0


def frame_bounds(image: sitk.Image, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (lo, hi) box, in frame coordinates, of the image's outer voxel faces."""
    corners = physical_corners(image) @ frame
    return corners.min(axis=0), corners.max(axis=0)


def frame_coordinates_of_indices(image: sitk.Image, frame: np.ndarray, index_zyx: np.ndarray) -> np.ndarray:
    """Frame coordinates (n, 3: x, y, z) of voxels given as (n, 3) numpy (z, y, x) indices."""
    return continuous_index_to_physical(image, np.asarray(index_zyx, dtype=np.float64)[:, ::-1]) @ frame


def index_box_in_frame_box(
    image: sitk.Image, frame: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Smallest (start, stop) integer (x, y, z) index box holding every voxel centre inside a frame box.

    Exact when the image's axes run along the frame's axes; a superset otherwise (see
    :func:`voxels_in_frame_box`). ``None`` when no voxel centre can lie inside.
    """
    box_corners = np.array(list(itertools.product(*zip(lo, hi, strict=True)))) @ frame.T
    index = continuous_index_of(image, box_corners)
    size = np.asarray(image.GetSize())
    start = np.clip(np.ceil(index.min(axis=0) - _INDEX_EPS), 0, size).astype(int)
    stop = np.clip(np.floor(index.max(axis=0) + _INDEX_EPS) + 1, 0, size).astype(int)
    if (stop <= start).any():
        return None
    return start, stop


def _steps_in_frame(image: sitk.Image, frame: np.ndarray) -> np.ndarray:
    """(3, 3) frame-coordinate change per unit step of each index axis (columns x, y, z)."""
    return frame.T @ _index_to_physical_matrix(image)


def _runs_along_frame(steps: np.ndarray) -> bool:
    """True when every index axis moves along exactly one frame axis (no per-voxel test needed)."""
    magnitude = np.abs(steps)
    return bool(np.all((magnitude <= 1e-9 * magnitude.max()).sum(axis=0) == 2))


def voxels_in_frame_box(
    image: sitk.Image, frame: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray | None] | None:
    """The voxels whose centres lie in the frame box [lo, hi], without whole-image coordinate arrays.

    Returns (z, y, x) slices of the enclosing index box and a boolean mask of that box's shape, or
    ``None`` for the mask when every voxel of the box is inside (axis-aligned images: the usual
    case costs nothing). Oblique images are tested in chunks of slices, so memory stays bounded by
    the box, not by the image. ``None`` overall when no voxel centre is inside.
    """
    box = index_box_in_frame_box(image, frame, lo, hi)
    if box is None:
        return None
    start, stop = box
    slices = tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1], strict=True))
    steps = _steps_in_frame(image, frame)
    if _runs_along_frame(steps):
        return slices, None  # type: ignore[return-value]
    offset = frame.T @ np.asarray(image.GetOrigin())
    shape = tuple(int(b - a) for a, b in zip(start[::-1], stop[::-1], strict=True))
    mask = np.ones(shape, dtype=bool)
    x = np.arange(start[0], stop[0], dtype=np.float64)
    y = np.arange(start[1], stop[1], dtype=np.float64)
    chunk = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], chunk):
        z = np.arange(start[2] + z0, min(start[2] + z0 + chunk, stop[2]), dtype=np.float64)
        part = mask[z0:z0 + len(z)]
        for axis in range(3):
            coordinate = (offset[axis] + steps[axis, 2] * z[:, None, None] + steps[axis, 1] * y[None, :, None]
                          + steps[axis, 0] * x[None, None, :])
            part &= (coordinate >= lo[axis]) & (coordinate <= hi[axis])
    return slices, mask  # type: ignore[return-value]


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
