"""The per-case QC picture: what a radiation oncologist checks a contour with, as one PNG.

One fixed-size picture (:data:`FIGURE_SIZE_PX`, 1600 x 1200 px) per case:

- a header bar with the case id and engine; a red banner "NOT A TRAINED NETWORK: <engine> - research/QC use
  only" (:data:`BANNER_RGB`) instead when the engine was not trained on real data;
- PET maximum-intensity projections, coronal and sagittal (SUV 0-10, inverted grey), with the outlines of the
  projected GTVp and GTVn masks (:data:`GTVP_RGB`, :data:`GTVN_RGB`) and each shown lesion's tag (P1, N1, ...) at
  its SUVmax voxel. They are drawn in the *patient frame* of :func:`hecktor.core.geometry.patient_frame` (the CT's
  axes without flips or permutations: LPS for an ordinary scan), so the head is up, the patient's right on the
  viewer's left (coronal) and anterior on the left (sagittal) whatever direction matrix the images are stored
  with;
- for each lesion (26-connected component of a class, as the node count of ``hecktor.measure`` counts them; the
  :data:`MAX_LESIONS_PER_CLASS` largest of each class, the rest counted) an axial CT slice (W400/L40) and a fused
  PET/CT slice through the lesion's SUVmax voxel, with both classes' outlines;
- the measurements, the predictions and the warnings (truncated) as text, with the colour legend.

Every image is resampled with SimpleITK onto a display grid named explicitly: the MIPs onto a grid along the
patient frame covering the CT (2 mm, coarser only for very large fields of view), in slabs so that memory stays
small; the lesion slices onto one 188 x 188 grid each through the SUVmax voxel. Labels use nearest neighbour,
CT and PET linear interpolation. The picture is composed as one RGB array (outlines painted at screen
resolution, no anti-aliasing, so the legend's colours are the exact pixel values) and matplotlib (the Agg canvas
directly, no pyplot: no global figure state, safe in threads) only adds the text and encodes the PNG. matplotlib
is imported when a picture is rendered, so importing this module does not need it.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hecktor.core.files import atomic_write
from hecktor.core.geometry import (
    direction_matrix,
    frame_bounds,
    frame_coordinates_of_indices,
    patient_frame,
    resample_to_grid,
    sub_grid,
    voxel_volume_ml,
)
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Measurements, Predictions

__all__ = [
    "BANNER_RGB",
    "CORONAL_MIP_BOX",
    "FIGURE_SIZE_PX",
    "GTVN_RGB",
    "GTVP_RGB",
    "MAX_LESIONS_PER_CLASS",
    "SAGITTAL_MIP_BOX",
    "Lesion",
    "LesionSummary",
    "QcInputs",
    "find_lesions",
    "render_qc_png",
    "write_qc_png",
]

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, width, height in picture pixels (top-left origin)

FIGURE_SIZE_PX = (1600, 1200)  # width, height
CORONAL_MIP_BOX: Box = (10, 100, 520, 535)
SAGITTAL_MIP_BOX: Box = (545, 100, 520, 535)
_TEXT_BOX: Box = (1085, 80, 505, 560)
_LESION_AREA_TOP = 650
_LESION_ROW_HEIGHT = 272
_LESION_PANEL_PX = 188
_LESION_BLOCK_GAP = 14
_LESION_PAIR_GAP = 6

# Outline colours: none of them can arise from the grey, inverted-grey or fused (hot over grey) pixels, whose
# channels always satisfy r >= g >= b, so a pixel of exactly this colour is an outline or the legend.
GTVP_RGB: RGB = (255, 0, 255)  # magenta
GTVN_RGB: RGB = (0, 200, 0)  # green
BANNER_RGB: RGB = (190, 0, 40)
_HEADER_RGB: RGB = (45, 55, 72)
_BACKGROUND_RGB: RGB = (255, 255, 255)
_CLASS_COLOURS = {LABEL_GTVP: GTVP_RGB, LABEL_GTVN: GTVN_RGB}
# Tags (P1, N1, ...) on the MIPs in darker shades of the outline colours: inside a MIP, a pixel of exactly an
# outline colour is then an outline pixel.
_TAG_COLOURS = {LABEL_GTVP: (150, 0, 150), LABEL_GTVN: (0, 115, 0)}
_CLASS_NAMES = {LABEL_GTVP: "GTVp", LABEL_GTVN: "GTVn"}
_CLASS_TAGS = {LABEL_GTVP: "P", LABEL_GTVN: "N"}

MAX_LESIONS_PER_CLASS = 4
MIP_SPACING_MM = 2.0
_MIP_MAX_VOXELS = 20_000_000  # the MIP grid coarsens beyond this (whole-body fields of view)
_MIP_SLAB_SLICES = 48  # display-grid slices resampled at a time: bounds the memory of the MIP
PET_DISPLAY_MAX_SUV = 10.0
CT_WINDOW_HU = (400.0, 40.0)  # width, level
# Fused panels: the PET colour is transparent below SUV 1 and reaches full opacity (0.65) at SUV 3, so that the
# CT stays readable around a lesion.
_FUSED_SUV_RANGE = (1.0, 3.0)
_FUSED_MAX_ALPHA = 0.65
_MAX_WARNING_LINES = 9
_TEXT_WRAP_CHARS = 56  # monospace 10.5 pt: ~8.8 px a character, in the 505 px text panel


@dataclass(frozen=True)
class QcInputs:
    """What one QC picture shows.

    ``labels`` is the uint8 label image (0, 1 = GTVp, 2 = GTVn) on the CT grid, or ``None`` when the case was not
    segmented (e.g. a PET without uptake). The CT is in HU and the PET in SUV, each on its own grid.
    """

    case_id: str
    ct: sitk.Image
    pet: sitk.Image
    labels: sitk.Image | None
    measurements: Measurements | None
    predictions: Predictions | None
    engine: str
    engine_trained_on_real_data: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lesion:
    """One connected component of a class, as the picture shows it.

    ``peak_xyz`` is the physical point (mm) of its SUVmax voxel (its first voxel when the PET does not cover it);
    ``extent_mm`` the largest side of its bounding box along the patient frame.
    """

    label: int
    rank: int  # 1 = the largest component of its class
    voxels: int
    volume_ml: float
    suvmax: float | None
    peak_xyz: tuple[float, float, float]
    extent_mm: float

    @property
    def tag(self) -> str:
        return f"{_CLASS_TAGS[self.label]}{self.rank}"


@dataclass(frozen=True)
class LesionSummary:
    """The lesions a picture shows, how many components each class has, and the (z, y, x) slices of the box
    holding every labelled voxel (``None``: no labelled voxel)."""

    shown: tuple[Lesion, ...]
    total: dict[int, int]  # components per class, shown or not
    box: tuple[slice, slice, slice] | None


def render_qc_png(inputs: QcInputs) -> bytes:
    """The QC picture of ``inputs`` as PNG bytes (:data:`FIGURE_SIZE_PX`, RGB)."""
    frame = patient_frame(direction_matrix(inputs.ct))
    summary = find_lesions(inputs.labels, inputs.pet, frame) if inputs.labels is not None else None
    picture = np.full((FIGURE_SIZE_PX[1], FIGURE_SIZE_PX[0], 3), _BACKGROUND_RGB, dtype=np.uint8)
    texts: list[_Text] = []
    _draw_header(picture, texts, inputs)
    _draw_mips(picture, texts, inputs, frame, summary)
    _draw_text_panel(texts, inputs, summary)
    _draw_lesions(picture, texts, inputs, frame, summary)
    return _encode_png(picture, texts)


def write_qc_png(inputs: QcInputs, target: Path) -> None:
    """Render the QC picture and write it to ``target`` whole or not at all (a staging path works the same)."""
    png = render_qc_png(inputs)
    atomic_write(Path(target), lambda tmp: tmp.write_bytes(png))


# --------------------------------------------------------------------------- lesions


def find_lesions(
    labels: sitk.Image, pet: sitk.Image, frame: np.ndarray, max_per_class: int = MAX_LESIONS_PER_CLASS
) -> LesionSummary:
    """The ``max_per_class`` largest 26-connected components of each class, and how many each class has.

    Only the bounding box of the labelled voxels is read (the PET is resampled linearly onto that part of the
    label grid), so a 512 x 512 x 200 CT with neck lesions costs a few milliseconds beyond one pass over the
    labels. Returns lesions ordered GTVp first, then by decreasing size.
    """
    array = sitk.GetArrayViewFromImage(labels)  # (z, y, x); ``labels`` outlives the view
    box = _nonzero_box(array)
    if box is None:
        return LesionSummary((), {LABEL_GTVP: 0, LABEL_GTVN: 0}, None)
    crop = np.asarray(array[box])
    start_zyx = np.array([s.start for s in box])
    crop_grid = sub_grid(labels, start_zyx[::-1], np.array([s.stop for s in box])[::-1])
    pet_crop = sitk.GetArrayFromImage(resample_to_grid(pet, crop_grid, "linear", np.nan))
    voxel_ml = voxel_volume_ml(labels)
    shown: list[Lesion] = []
    total: dict[int, int] = {}
    for label in (LABEL_GTVP, LABEL_GTVN):
        components = cc3d.connected_components(crop == label, connectivity=26)
        stats = cc3d.statistics(components)
        counts = np.asarray(stats["voxel_counts"][1:], dtype=np.int64)
        total[label] = int(counts.size)
        for rank, index in enumerate(np.argsort(-counts, kind="stable")[:max_per_class], start=1):
            component_box = stats["bounding_boxes"][index + 1]
            inside = components[component_box] == index + 1
            suv = np.where(inside, pet_crop[component_box], -np.inf)
            suv[np.isnan(suv)] = -np.inf  # outside the PET's field of view
            peak = np.unravel_index(int(np.argmax(suv)), suv.shape)
            suvmax = float(suv[peak])
            if not np.isfinite(suvmax):
                peak = tuple(int(i[0]) for i in np.nonzero(inside))
            peak_zyx = start_zyx + np.array([s.start for s in component_box]) + np.asarray(peak)
            corners_zyx = start_zyx + np.array([[s.start, s.stop - 1] for s in component_box]).T
            extent = np.ptp(frame_coordinates_of_indices(labels, frame, corners_zyx), axis=0).max()
            peak_xyz = labels.TransformContinuousIndexToPhysicalPoint([float(i) for i in peak_zyx[::-1]])
            shown.append(Lesion(
                label=label, rank=rank, voxels=int(counts[index]), volume_ml=float(counts[index]) * voxel_ml,
                suvmax=suvmax if np.isfinite(suvmax) else None, peak_xyz=tuple(peak_xyz),
                extent_mm=float(extent) + float(max(labels.GetSpacing())),
            ))
    return LesionSummary(tuple(shown), total, box)


def _nonzero_box(array: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices (z, y, x) of the smallest box holding every nonzero voxel; ``None`` when there is none.

    Reads the whole array once (per-slice maxima, no full-size temporary); the y and x extents are then found
    within the labelled slices only.
    """
    z_hits = np.flatnonzero(array.max(axis=(1, 2)))
    if z_hits.size == 0:
        return None
    z = slice(int(z_hits[0]), int(z_hits[-1]) + 1)
    y_hits = np.flatnonzero(array[z].max(axis=(0, 2)))
    y = slice(int(y_hits[0]), int(y_hits[-1]) + 1)
    x_hits = np.flatnonzero(array[z, y].max(axis=(0, 1)))
    return z, y, slice(int(x_hits[0]), int(x_hits[-1]) + 1)


# --------------------------------------------------------------------------- display grids


def _frame_grid(frame: np.ndarray, origin_frame: np.ndarray, size_xyz: Sequence[int], spacing: float) -> sitk.Image:
    """An empty uint8 grid along the patient frame whose first voxel centre is at frame point ``origin_frame``."""
    grid = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetDirection(frame.flatten().tolist())
    grid.SetOrigin((frame @ np.asarray(origin_frame, dtype=np.float64)).tolist())
    return grid


@dataclass(frozen=True)
class _MipGrid:
    """The MIP display grid: the CT's box in the patient frame at ``spacing`` mm (``lo``: its first voxel face)."""

    frame: np.ndarray
    lo: np.ndarray
    spacing: float
    size_xyz: tuple[int, int, int]

    def grid(self, z_start: int = 0, z_stop: int | None = None) -> sitk.Image:
        z_stop = self.size_xyz[2] if z_stop is None else z_stop
        origin = self.lo + self.spacing * (np.array([0.0, 0.0, z_start]) + 0.5)
        return _frame_grid(self.frame, origin, (self.size_xyz[0], self.size_xyz[1], z_stop - z_start), self.spacing)

    def index_of(self, point_xyz: Sequence[float]) -> np.ndarray:
        """Continuous (x, y, z) index of a physical point."""
        return (self.frame.T @ np.asarray(point_xyz, dtype=np.float64) - self.lo) / self.spacing - 0.5


def _mip_grid(ct: sitk.Image, frame: np.ndarray) -> _MipGrid:
    lo, hi = frame_bounds(ct, frame)
    extent = hi - lo
    spacing = max(MIP_SPACING_MM, float(np.cbrt(np.prod(extent) / _MIP_MAX_VOXELS)))
    size = np.maximum(np.ceil(extent / spacing - 1e-6).astype(int), 1)
    return _MipGrid(frame, lo, spacing, (int(size[0]), int(size[1]), int(size[2])))


def _pet_mips(pet: sitk.Image, mip: _MipGrid) -> tuple[np.ndarray, np.ndarray]:
    """Coronal (z, x) and sagittal (z, y) maximum projections of the PET (SUV) on the MIP grid.

    When the PET's axes run along the patient frame (any flips or permutations; the usual case) the projections
    are taken over the native PET voxels and only the two 2-D projections are resampled onto the MIP grid: the
    true MIP of the data, and ~100x cheaper than resampling a whole-body PET in 3-D. An oblique PET is resampled
    in 3-D onto the MIP grid, a slab at a time so that memory stays small.
    """
    native = _pet_along_frame(pet, mip.frame)
    if native is None:
        return _pet_mips_resampled(pet, mip)
    values, first_centre, spacing = native
    nx, ny, nz = mip.size_xyz
    coronal = _resample_2d(values.max(axis=1), first_centre[[0, 2]], spacing[[0, 2]], mip.lo[[0, 2]],
                           mip.spacing, (nz, nx))
    sagittal = _resample_2d(values.max(axis=2), first_centre[[1, 2]], spacing[[1, 2]], mip.lo[[1, 2]],
                            mip.spacing, (nz, ny))
    return coronal, sagittal


def _pet_along_frame(pet: sitk.Image, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The PET's voxels as a (z, y, x) array along the frame's axes (a view: transposed and flipped), the frame
    coordinates (x, y, z) of its first voxel centre and its spacing along the frame's axes; ``None`` when the
    PET's axes are not a signed permutation of the frame's."""
    steps = frame.T @ direction_matrix(pet)  # column i: the frame coordinates of PET index axis i
    index_axis_of = np.argmax(np.abs(steps), axis=1)  # frame axis f runs along PET index axis index_axis_of[f]
    permutation = np.zeros((3, 3))
    permutation[np.arange(3), index_axis_of] = 1.0
    if not np.allclose(np.abs(steps), permutation, atol=1e-4):
        return None
    signs = np.sign(steps[np.arange(3), index_axis_of])
    # numpy axis of index axis i is 2 - i; the result's numpy axes are frame z, y, x.
    values = sitk.GetArrayViewFromImage(pet).transpose([2 - index_axis_of[f] for f in (2, 1, 0)])
    values = values[tuple(slice(None, None, -1) if signs[f] < 0 else slice(None) for f in (2, 1, 0))]
    size = np.asarray(pet.GetSize(), dtype=np.float64)
    corners = frame_coordinates_of_indices(pet, frame, np.array([[0.0, 0.0, 0.0], (size - 1.0)[::-1]]))
    spacing = np.asarray(pet.GetSpacing(), dtype=np.float64)[index_axis_of]
    return values, corners.min(axis=0), spacing


def _resample_2d(
    values: np.ndarray, first_centre: np.ndarray, spacing: np.ndarray, lo: np.ndarray, target_spacing: float,
    target_shape: tuple[int, int],
) -> np.ndarray:
    """Linear resampling of a (rows, columns) projection onto the MIP grid's matching plane.

    ``first_centre``/``spacing``/``lo`` are (column, row) frame coordinates: the source's first pixel centre and
    pitch, and the target's first pixel face; outside the source is 0.
    """
    source = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
    source.SetSpacing([float(v) for v in spacing])
    source.SetOrigin([float(v) for v in first_centre])
    reference = sitk.Image([target_shape[1], target_shape[0]], sitk.sitkFloat32)
    reference.SetSpacing([target_spacing, target_spacing])
    reference.SetOrigin([float(v) + target_spacing / 2.0 for v in lo])
    return sitk.GetArrayFromImage(resample_to_grid(source, reference, "linear", 0.0))


def _pet_mips_resampled(pet: sitk.Image, mip: _MipGrid) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pet_mips` for an oblique PET: 3-D resampling onto the MIP grid, a slab at a time."""
    nx, ny, nz = mip.size_xyz
    coronal = np.zeros((nz, nx), np.float32)
    sagittal = np.zeros((nz, ny), np.float32)
    for z in range(0, nz, _MIP_SLAB_SLICES):
        z_stop = min(z + _MIP_SLAB_SLICES, nz)
        slab = sitk.GetArrayFromImage(resample_to_grid(pet, mip.grid(z, z_stop), "linear", 0.0))
        coronal[z:z_stop] = slab.max(axis=1)
        sagittal[z:z_stop] = slab.max(axis=2)
    return coronal, sagittal


def _label_mips(
    labels: sitk.Image, box: tuple[slice, slice, slice] | None, mip: _MipGrid
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class, the coronal (z, x) and sagittal (z, y) projections (bool) of its mask on the MIP grid.

    Only the part of the MIP grid over ``box`` (the labelled voxels' (z, y, x) slices) is resampled (nearest
    neighbour).
    """
    nx, ny, nz = mip.size_xyz
    empty = {label: (np.zeros((nz, nx), bool), np.zeros((nz, ny), bool)) for label in (LABEL_GTVP, LABEL_GTVN)}
    if box is None:
        return empty
    crop = labels[box[2].start:box[2].stop, box[1].start:box[1].stop, box[0].start:box[0].stop]
    lo, hi = frame_bounds(crop, mip.frame)
    start = np.clip(np.floor((lo - mip.lo) / mip.spacing).astype(int), 0, mip.size_xyz)
    stop = np.clip(np.ceil((hi - mip.lo) / mip.spacing).astype(int), 0, mip.size_xyz)
    if (stop <= start).any():
        return empty
    part_grid = _frame_grid(mip.frame, mip.lo + mip.spacing * (start + 0.5), stop - start, mip.spacing)
    part = sitk.GetArrayFromImage(sitk.Resample(crop, part_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    for label, (coronal, sagittal) in empty.items():
        mask = part == label
        coronal[start[2]:stop[2], start[0]:stop[0]] = mask.any(axis=1)
        sagittal[start[2]:stop[2], start[1]:stop[1]] = mask.any(axis=2)
    return empty


def _axial_slice(
    inputs: QcInputs, frame: np.ndarray, centre_xyz: Sequence[float], fov_mm: float, size_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT (HU), PET (SUV) and labels, (size_px, size_px) each, on an axial patient-frame slice centred on a point.

    Rows run anterior to posterior, columns from the patient's right to left (radiological convention).
    """
    spacing = fov_mm / size_px
    centre = frame.T @ np.asarray(centre_xyz, dtype=np.float64)
    half = (size_px - 1) / 2.0 * spacing
    grid = _frame_grid(frame, centre - np.array([half, half, 0.0]), (size_px, size_px, 1), spacing)
    ct = sitk.GetArrayFromImage(resample_to_grid(inputs.ct, grid, "linear", -1024.0))[0]
    pet = sitk.GetArrayFromImage(resample_to_grid(inputs.pet, grid, "linear", 0.0))[0]
    if inputs.labels is None:
        raise ValueError("an axial lesion slice needs the label image")
    labels = sitk.GetArrayFromImage(
        sitk.Resample(inputs.labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))[0]
    return ct, pet, labels


# --------------------------------------------------------------------------- pixels


def _grey_rgb(values: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 grey."""
    grey = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _ct_rgb(hu: np.ndarray) -> np.ndarray:
    width, level = CT_WINDOW_HU
    return _grey_rgb((hu - (level - width / 2.0)) / width)


def _pet_mip_rgb(suv: np.ndarray) -> np.ndarray:
    """Inverted grey, SUV 0 white to SUV >= :data:`PET_DISPLAY_MAX_SUV` black (the usual MIP reading)."""
    return _grey_rgb(1.0 - suv / PET_DISPLAY_MAX_SUV)


def _hot(values: np.ndarray) -> np.ndarray:
    """matplotlib's "hot" colour map, (h, w) in [0, 1] -> (h, w, 3) float in [0, 1]: black, red, yellow, white."""
    x = np.clip(values, 0.0, 1.0)
    return np.stack([np.clip(x / 0.365079, 0, 1), np.clip((x - 0.365079) / 0.380953, 0, 1),
                     np.clip((x - 0.746032) / 0.253968, 0, 1)], axis=-1)


def _fused_rgb(hu: np.ndarray, suv: np.ndarray) -> np.ndarray:
    ct = _ct_rgb(hu).astype(np.float32) / 255.0
    low, high = _FUSED_SUV_RANGE
    alpha = (_FUSED_MAX_ALPHA * np.clip((suv - low) / (high - low), 0.0, 1.0))[..., None]
    fused = (1.0 - alpha) * ct + alpha * _hot(suv / PET_DISPLAY_MAX_SUV)
    return np.round(fused * 255.0).astype(np.uint8)


def _outline(mask: np.ndarray, width_px: int) -> np.ndarray:
    """The band of ``mask`` within ``width_px`` pixels of its edge (inside it, so it marks the mask's boundary)."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=width_px, border_value=0)


def _paint_outlines(rgb: np.ndarray, masks: dict[int, np.ndarray], width_px: int) -> None:
    # GTVp is painted last: where the classes' outlines cross, the primary stays visible.
    for label in (LABEL_GTVN, LABEL_GTVP):
        if label in masks:
            rgb[_outline(masks[label], width_px)] = _CLASS_COLOURS[label]


def _resize(values: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    zoom = (shape[0] / values.shape[0], shape[1] / values.shape[1])
    return ndimage.zoom(values, zoom, order=order, mode="nearest", grid_mode=True)


def _fit(shape: tuple[int, int], box_w: int, box_h: int) -> tuple[int, int]:
    """The largest (h, w) of the same aspect as ``shape`` (square pixels) inside box_w x box_h."""
    scale = min(box_w / shape[1], box_h / shape[0])
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _paste(picture: np.ndarray, rgb: np.ndarray, left: int, top: int) -> None:
    picture[top:top + rgb.shape[0], left:left + rgb.shape[1]] = rgb


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Text:
    """A text drawn over the picture at pixel (x, y) from the top-left; ``size`` in points (at 100 dpi,
    1 pt = 1.39 px); ``ha``/``va`` as matplotlib's."""

    x: float
    y: float
    text: str
    size: float = 11.0
    colour: RGB = (20, 20, 20)
    weight: str = "normal"
    ha: str = "left"
    va: str = "top"
    family: str = "sans-serif"


def _draw_header(picture: np.ndarray, texts: list[_Text], inputs: QcInputs) -> None:
    height = 64
    if inputs.engine_trained_on_real_data:
        picture[:height] = _HEADER_RGB
        texts.append(_Text(16, height / 2, f"QC  {_shorten(inputs.case_id, 60)}", 20, (255, 255, 255), "bold",
                           va="center"))
        texts.append(_Text(FIGURE_SIZE_PX[0] - 16, height / 2, f"engine: {_shorten(inputs.engine, 40)}", 13,
                           (230, 230, 230), ha="right", va="center"))
    else:
        picture[:height] = BANNER_RGB
        texts.append(_Text(FIGURE_SIZE_PX[0] / 2, height / 2,
                           f"NOT A TRAINED NETWORK: {_shorten(inputs.engine, 40)} \u2014 research/QC use only", 22,
                           (255, 255, 255), "bold", ha="center", va="center"))


def _draw_mips(
    picture: np.ndarray, texts: list[_Text], inputs: QcInputs, frame: np.ndarray, summary: LesionSummary | None
) -> None:
    mip = _mip_grid(inputs.ct, frame)
    pet_coronal, pet_sagittal = _pet_mips(inputs.pet, mip)
    masks = _label_mips(inputs.labels, summary.box, mip) if inputs.labels is not None and summary else {}
    views = (
        # (title, box, projection, horizontal frame axis (x or y) and which projection of a mask pair, sides)
        ("Coronal PET MIP", CORONAL_MIP_BOX, pet_coronal, 0, ("R", "L")),
        ("Sagittal PET MIP", SAGITTAL_MIP_BOX, pet_sagittal, 1, ("A", "P")),
    )
    for title, (left, top, width, height), pet_values, axis, (left_side, right_side) in views:
        texts.append(_Text(left, top - 22, f"{title}  (SUV 0\u2013{PET_DISPLAY_MAX_SUV:g}, inverted grey; "
                           f"{mip.spacing:.1f} mm grid)", 11, weight="bold"))
        # Rows of the projections run inferior to superior (frame z); the picture puts the head up.
        shape = _fit(pet_values.shape, width, height)
        rgb = _pet_mip_rgb(_resize(pet_values[::-1], shape, order=1))
        view_masks = {label: _resize(pair[axis][::-1].astype(np.float32), shape, order=1) >= 0.5
                      for label, pair in masks.items()}
        _paint_outlines(rgb, view_masks, width_px=2)
        image_left = left + (width - shape[1]) // 2
        _paste(picture, rgb, image_left, top)
        # A thin frame shows where the CT's field of view ends.
        picture[top:top + shape[0], [image_left - 1, image_left + shape[1]]] = (150, 150, 150)
        picture[[top - 1, top + shape[0]], image_left - 1:image_left + shape[1] + 1] = (150, 150, 150)
        texts.append(_Text(image_left + 4, top + shape[0] - 4, left_side, 12, (90, 90, 90), "bold", va="bottom"))
        texts.append(_Text(image_left + shape[1] - 4, top + shape[0] - 4, right_side, 12, (90, 90, 90), "bold",
                           ha="right", va="bottom"))
        texts.append(_Text(image_left + shape[1] / 2, top + 4, "S", 12, (90, 90, 90), "bold", ha="center"))
        if summary is None:
            continue
        scale = shape[0] / pet_values.shape[0]
        for lesion in summary.shown:
            index = mip.index_of(lesion.peak_xyz)
            column = (index[axis] + 0.5) * scale
            row = (mip.size_xyz[2] - index[2] - 0.5) * scale
            # The tag sits right of the lesion's outline (half its extent away), not over it.
            clearance = lesion.extent_mm / 2.0 / mip.spacing * scale + 5.0
            texts.append(_Text(image_left + column + clearance, top + row, lesion.tag, 10,
                               _TAG_COLOURS[lesion.label], "bold", va="center"))


def _shorten(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters with an ellipsis (the full text is in the text panel)."""
    return text if len(text) <= length else text[: length - 1] + "\u2026"


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}{unit}"


def _draw_text_panel(texts: list[_Text], inputs: QcInputs, summary: LesionSummary | None) -> None:
    left, top, _, height = _TEXT_BOX
    lines: list[tuple[str, RGB, str]] = []  # text, colour, weight

    def add(text: str = "", colour: RGB = (20, 20, 20), weight: str = "normal") -> None:
        for line in textwrap.wrap(text, _TEXT_WRAP_CHARS, subsequent_indent="    ") or [""]:
            lines.append((line, colour, weight))

    add(f"Case {inputs.case_id}", weight="bold")
    trained = "trained on real data" if inputs.engine_trained_on_real_data else "NOT trained on real data"
    add(f"Engine: {inputs.engine} ({trained})", (20, 20, 20) if inputs.engine_trained_on_real_data else BANNER_RGB)
    add()
    add("Measurements (CT grid, PET in SUV)", weight="bold")
    m = inputs.measurements
    if m is None:
        add("  none (not segmented)")
    else:
        add(f"  GTVp  {m.gtvp_volume_ml:8.2f} mL   SUVmax {_fmt(m.gtvp_suvmax):>5}   SUVmean {_fmt(m.gtvp_suvmean):>5}")
        add(f"  GTVn  {m.gtvn_volume_ml:8.2f} mL   SUVmax {_fmt(m.gtvn_suvmax):>5}   SUVmean {_fmt(m.gtvn_suvmean):>5}")
        add(f"  TLG {m.tlg:.1f} SUV\u00b7mL   NLG {m.nlg:.1f} SUV\u00b7mL   nodes {m.node_count}")
    add()
    add("Predictions", weight="bold")
    p = inputs.predictions
    if p is None:
        add("  none (Tasks 2/3 not run)")
    else:
        add(f"  RFS risk       {p.rfs_risk:.3f}  (higher = higher risk)")
        decision = "positive" if p.hpv_positive else "negative"
        add(f"  HPV            P(positive) {p.hpv_probability:.3f} \u2192 {decision}")
    add()
    add("Lesions shown (26-connected components)", weight="bold")
    if summary is None:
        add("  not segmented (no label image)")
    else:
        for label in (LABEL_GTVP, LABEL_GTVN):
            shown = sum(lesion.label == label for lesion in summary.shown)
            more = summary.total[label] - shown
            add(f"  {_CLASS_NAMES[label]}: {summary.total[label]} component(s)"
                + (f", {more} more not shown" if more else ""))
    add()
    add(f"Display: CT W{CT_WINDOW_HU[0]:g}/L{CT_WINDOW_HU[1]:g}; fused = PET hot SUV 0\u2013"
        f"{PET_DISPLAY_MAX_SUV:g} over CT, transparent below SUV {_FUSED_SUV_RANGE[0]:g}", (90, 90, 90))
    add()
    add(f"Warnings ({len(inputs.warnings)})", weight="bold")
    warning_lines: list[str] = []
    for warning in inputs.warnings:
        warning_lines += textwrap.wrap(warning, _TEXT_WRAP_CHARS - 4, initial_indent="\u2022 ",
                                       subsequent_indent="  ", max_lines=3, placeholder=" [\u2026]")
    if len(warning_lines) > _MAX_WARNING_LINES:
        warning_lines = [*warning_lines[:_MAX_WARNING_LINES - 1], "\u2026 more: see the case record"]
    for line in warning_lines or ["  none"]:
        lines.append((line, (150, 60, 0), "normal"))
    line_height = 17.5
    for number, (line, colour, weight) in enumerate(lines[: int((height - 40) / line_height)]):
        texts.append(_Text(left, top + number * line_height, line, 10.5, colour, weight, family="monospace"))
    # The legend sits at the panel's foot, outside the MIPs, so an outline colour inside a MIP is an outline.
    legend_y = top + height - 18
    for offset, label in ((0, LABEL_GTVP), (250, LABEL_GTVN)):
        texts.append(_Text(left + offset, legend_y, f"\u25a0 {_CLASS_NAMES[label]} ({_CLASS_TAGS[label]}1, "
                           f"{_CLASS_TAGS[label]}2, \u2026)", 12, _CLASS_COLOURS[label], "bold"))


def _draw_lesions(
    picture: np.ndarray, texts: list[_Text], inputs: QcInputs, frame: np.ndarray, summary: LesionSummary | None
) -> None:
    area_centre = (FIGURE_SIZE_PX[0] / 2, _LESION_AREA_TOP + _LESION_ROW_HEIGHT)
    if summary is None or not summary.shown:
        message = "not segmented (no label image)" if summary is None else "no lesion segmented"
        texts.append(_Text(*area_centre, message, 20, (120, 120, 120), "bold", ha="center", va="center"))
        return
    panel = _LESION_PANEL_PX
    block_width = 2 * panel + _LESION_PAIR_GAP
    for row, label in enumerate((LABEL_GTVP, LABEL_GTVN)):
        top = _LESION_AREA_TOP + row * _LESION_ROW_HEIGHT
        lesions = [lesion for lesion in summary.shown if lesion.label == label]
        more = summary.total[label] - len(lesions)
        heading = f"{_CLASS_NAMES[label]}: {summary.total[label]} lesion(s)"
        heading += f"; the {len(lesions)} largest shown, {more} more not shown" if more else ""
        heading += " \u2014 axial CT (W400/L40) and fused PET/CT through each lesion's SUVmax voxel" if lesions else ""
        texts.append(_Text(10, top, heading, 11.5, _CLASS_COLOURS[label] if lesions else (120, 120, 120), "bold"))
        for column, lesion in enumerate(lesions):
            left = 10 + column * (block_width + _LESION_BLOCK_GAP)
            fov = float(np.clip(2.0 * lesion.extent_mm + 30.0, 60.0, 220.0))
            ct, pet, labels = _axial_slice(inputs, frame, lesion.peak_xyz, fov, panel)
            masks = {label: labels == label for label in (LABEL_GTVP, LABEL_GTVN)}
            z_mm = float((frame.T @ np.asarray(lesion.peak_xyz))[2])
            texts.append(_Text(left, top + 22, f"{lesion.tag}   {lesion.volume_ml:.1f} mL   SUVmax "
                               f"{_fmt(lesion.suvmax)}   z {z_mm:.0f} mm", 10, (20, 20, 20), "bold"))
            for offset, rgb in ((0, _ct_rgb(ct)), (panel + _LESION_PAIR_GAP, _fused_rgb(ct, pet))):
                _paint_outlines(rgb, masks, width_px=2)
                _paste(picture, rgb, left + offset, top + 42)
                texts.append(_Text(left + offset + 3, top + 44, "CT" if offset == 0 else "PET/CT", 9,
                                   (255, 255, 0), "bold"))
            texts.append(_Text(left + 3, top + 42 + panel - 3, "R", 9, (255, 255, 0), va="bottom"))
            texts.append(_Text(left + panel - 3, top + 42 + panel - 3, "L", 9, (255, 255, 0), ha="right",
                               va="bottom"))
            texts.append(_Text(left + 2 * panel + _LESION_PAIR_GAP - 3, top + 42 + panel - 3, f"{fov:.0f} mm", 8,
                               (255, 255, 0), ha="right", va="bottom"))


# --------------------------------------------------------------------------- PNG


def _encode_png(picture: np.ndarray, texts: Sequence[_Text]) -> bytes:
    """Draw ``texts`` over ``picture`` and encode it as PNG.

    The texts are drawn by matplotlib's Agg canvas on a transparent figure of the picture's size and composited
    over it here: the picture's pixels are never resampled (figimage would pass them through matplotlib's image
    resampler, a third of the rendering time).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    dpi = 100
    width, height = FIGURE_SIZE_PX
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=(0.0, 0.0, 0.0, 0.0))
    canvas = FigureCanvasAgg(figure)
    for text in texts:
        figure.text(text.x / width, 1.0 - text.y / height, text.text, fontsize=text.size,
                    color=tuple(c / 255.0 for c in text.colour), fontweight=text.weight, ha=text.ha, va=text.va,
                    family=text.family)
    canvas.draw()
    # The canvas's buffer is straight (not premultiplied) RGBA: transparent pixels read (255, 255, 255, 0).
    overlay = np.asarray(canvas.buffer_rgba())
    alpha = overlay[..., 3:4].astype(np.float32) / 255.0
    composed = alpha * overlay[..., :3].astype(np.float32) + (1.0 - alpha) * picture.astype(np.float32)
    rgb = np.clip(np.round(composed), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # Level 3 compresses these pictures within ~10 % of level 6 at a third of the time.
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
