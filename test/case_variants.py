"""Ways of storing the same physical case differently (test helpers, not product code).

``stored_flipped`` reverses index axes while keeping every voxel at its physical place;
``rigidly_rotated`` moves the whole scene (image data unchanged), as if the patient had been
scanned turned by a rotation. Both are lossless, so a geometry-correct pipeline must give the same
answers, voxel for voxel in physical space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def stored_flipped(image: sitk.Image, axes_xyz: Sequence[int]) -> sitk.Image:
    """The same physical image stored with index axes ``axes_xyz`` (0=x, 1=y, 2=z) reversed."""
    array = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = image.GetSize()
    for axis in axes_xyz:
        array = np.flip(array, axis=2 - axis)
        origin = origin + direction[:, axis] * spacing[axis] * (size[axis] - 1)
        direction[:, axis] = -direction[:, axis]
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(tuple(spacing))
    out.SetOrigin(tuple(origin))
    out.SetDirection(direction.flatten().tolist())
    return out


def unflip_array(array: np.ndarray, axes_xyz: Sequence[int]) -> np.ndarray:
    """Undo :func:`stored_flipped` on a (z, y, x) array."""
    for axis in axes_xyz:
        array = np.flip(array, axis=2 - axis)
    return array


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def rigidly_rotated(image: sitk.Image, matrix: np.ndarray, centre: Sequence[float]) -> sitk.Image:
    """The same image data with its geometry rotated by ``matrix`` about ``centre`` (physical mm)."""
    out = sitk.Image(image)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(centre, dtype=np.float64)
    out.SetDirection((matrix @ direction).flatten().tolist())
    out.SetOrigin(tuple(matrix @ (np.asarray(image.GetOrigin()) - c) + c))
    return out
