"""Radiomics of GTVp and GTVn: one fixed, named feature set from CT (HU), PET (SUV) and the label image.

:func:`radiomics_features` is the one implementation: the measure stage calls it at run time and
``python -m training radiomics`` calls it for training tables, so both compute identically. Its
settings are the manifest's ``radiomics`` section (:class:`hecktor.core.manifest.RadiomicsConfig`); the
feature list is fixed here (:data:`FEATURE_NAMES`, stable order and names).

Processing, per region (GTVp = label 1, GTVn = label 2), following IBSI 1 (Zwanenburg et al.,
Radiology 2020) as far as PyRadiomics allows:

1. **Grid.** An isotropic ``spacing_mm`` grid in the patient frame of the label image, centred on the
   region's bounding box (IBSI "align grid centres"), one voxel of margin on each side.
2. **Interpolation.** CT and PET: trilinear from their own grids onto that grid (outside a scan: no
   value). CT is rounded to whole HU when ``round_intensities`` (IBSI's recommendation for CT). The
   region's mask: trilinear interpolation of the binary mask, kept where >= ``mask_threshold``
   (IBSI's partial-volume rule with 0.5). This is the morphological mask; shape features use it.
3. **Re-segmentation.** Intensity features of a modality use the morphological mask minus the voxels
   outside that modality's ``resegment_range`` (and voxels with no value): the intensity mask.
4. **Discretisation.** Fixed bin size ``bin_width``, bins anchored at the range's lower bound, which
   the schema requires to be a whole multiple of ``bin_width``: PyRadiomics' bins (edges at multiples
   of the bin width) are then exactly IBSI's, and only the numbering of the bins differs (PyRadiomics
   numbers from the lowest occupied bin). Features that depend on that numbering (GLCM joint
   average, sum average, autocorrelation, normalised inverse differences) are left out of the set.
5. **Features** (PyRadiomics 3.1, pyradiomics-bhklab): first order (statistics on the interpolated
   intensities; entropy and uniformity on the discretised histogram), shape (on the morphological
   mask, once per region: the same for CT and PET), and GLCM with distance 1, symmetric, features
   averaged over the 13 3-D directions (IBSI "3D averaged").

Deviations from IBSI, documented (``test/test_radiomics.py`` checks the values on IBSI's digital
phantom): PyRadiomics' kurtosis is reported minus 3 (IBSI's excess kurtosis) as
``firstorder_ExcessKurtosis``; PyRadiomics' principal-axis lengths use the population covariance of
the voxel centres, so major/minor/least axis lengths are sqrt((N - 1) / N) of IBSI's (0.7 % low for
the 74-voxel phantom, < 0.1 % above 500 voxels); elongation and flatness are unaffected. No
intensity-histogram or GLRLM/GLSZM/NGTDM families.

A region that is absent, or smaller than ``min_voxels`` on the resampled grid (morphological or
intensity mask), gives ``None`` for every feature of that region (or of that modality). Shape features cost
the square of the region's surface (PyRadiomics' maximum diameter compares every pair of mesh vertices: 47 s
for 1,300 scattered 12 mm nodes): a region with more than ``max_surface_voxels`` surface voxels gets ``None``
for its shape features, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hecktor.core.geometry import (
    direction_matrix,
    frame_bounds,
    image_on_grid,
    make_grid,
    patient_frame,
    resample_to_grid,
    sub_grid,
)
from hecktor.core.manifest import RadiomicsConfig, RadiomicsModalityConfig
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP

__all__ = [
    "FEATURE_NAMES",
    "FIRSTORDER_FEATURES",
    "GLCM_FEATURES",
    "MODALITIES",
    "REGIONS",
    "SHAPE_FEATURES",
    "radiomics_features",
]

log = logging.getLogger(__name__)

REGIONS: Mapping[str, int] = {"gtvp": LABEL_GTVP, "gtvn": LABEL_GTVN}
MODALITIES = ("ct", "pet")
# PyRadiomics feature names. Kurtosis is reported as ExcessKurtosis (PyRadiomics' value minus 3).
FIRSTORDER_FEATURES = (
    "Mean",
    "Variance",
    "Skewness",
    "Kurtosis",
    "Median",
    "Minimum",
    "Maximum",
    "10Percentile",
    "90Percentile",
    "InterquartileRange",
    "Range",
    "MeanAbsoluteDeviation",
    "RobustMeanAbsoluteDeviation",
    "RootMeanSquared",
    "Energy",
    "Entropy",
    "Uniformity",
)
SHAPE_FEATURES = (
    "MeshVolume",
    "VoxelVolume",
    "SurfaceArea",
    "SurfaceVolumeRatio",
    "Sphericity",
    "Maximum3DDiameter",
    "MajorAxisLength",
    "MinorAxisLength",
    "LeastAxisLength",
    "Elongation",
    "Flatness",
)
# Only features that do not depend on how the grey levels are numbered (see the module docstring).
GLCM_FEATURES = (
    "Contrast",
    "Correlation",
    "DifferenceAverage",
    "DifferenceEntropy",
    "DifferenceVariance",
    "Id",
    "Idm",
    "InverseVariance",
    "JointEnergy",
    "JointEntropy",
    "MaximumProbability",
    "SumEntropy",
    "SumSquares",
    "ClusterTendency",
    "ClusterShade",
    "ClusterProminence",
    "Imc1",
    "Imc2",
)
_REPORTED_NAME = {"Kurtosis": "ExcessKurtosis"}


def _shape_names(region: str) -> list[str]:
    return [f"{region}_shape_{name}" for name in SHAPE_FEATURES]


def _intensity_names(modality: str, region: str) -> list[str]:
    firstorder = [f"{modality}_{region}_firstorder_{_REPORTED_NAME.get(n, n)}" for n in FIRSTORDER_FEATURES]
    return firstorder + [f"{modality}_{region}_glcm_{n}" for n in GLCM_FEATURES]


FEATURE_NAMES: tuple[str, ...] = tuple(
    name
    for region in REGIONS
    for name in _shape_names(region) + [n for modality in MODALITIES for n in _intensity_names(modality, region)]
)


def radiomics_features(
    ct: sitk.Image, pet: sitk.Image, labels: sitk.Image, config: RadiomicsConfig
) -> dict[str, float | None]:
    """Every feature of :data:`FEATURE_NAMES`, in that order, for one case.

    Args:
        ct: CT in HU, on its own grid.
        pet: PET in SUV, on its own grid (same physical frame as the CT).
        labels: uint8 label image (0 background, 1 GTVp, 2 GTVn), usually on the CT grid.
        config: the manifest's ``radiomics`` section.

    Returns:
        ``{name: value}``; ``None`` for the features of an absent or too small region.
    """
    features: dict[str, float | None] = dict.fromkeys(FEATURE_NAMES)
    label_array = sitk.GetArrayFromImage(labels)  # an owned copy, never a view of a temporary image
    for region, label in REGIONS.items():
        zyx = np.argwhere(label_array == label)
        if len(zyx) == 0:
            continue
        lo, hi = zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1] + 1  # (x, y, z) index box
        grid = _region_grid(labels, lo, hi, config.spacing_mm)
        morphological = _region_mask(labels, label, lo, hi, grid, config)
        if int(morphological.sum()) < config.min_voxels:
            continue
        surface = int((morphological & ~ndimage.binary_erosion(morphological)).sum())
        if surface <= config.max_surface_voxels:
            mask = image_on_grid(morphological.astype(np.uint8), grid)
            features.update(_extract("shape", None, mask, 0.0, _shape_names(region)))
        else:
            log.warning(
                "radiomics: %s has %d surface voxels (more than %d): no shape features",
                region,
                surface,
                config.max_surface_voxels,
            )
        for modality, image, settings in (("ct", ct, config.ct), ("pet", pet, config.pet)):
            values = sitk.GetArrayFromImage(resample_to_grid(image, grid, "linear", math.nan)).astype(np.float64)
            if settings.round_intensities:
                values = np.round(values)
            intensity = morphological & _in_range(values, settings)
            if int(intensity.sum()) < config.min_voxels:
                continue
            on_grid = image_on_grid(np.where(intensity, values, 0.0), grid)
            intensity_mask = image_on_grid(intensity.astype(np.uint8), grid)
            names = _intensity_names(modality, region)
            split = len(FIRSTORDER_FEATURES)
            features.update(_extract("firstorder", on_grid, intensity_mask, settings.bin_width, names[:split]))
            features.update(_extract("glcm", on_grid, intensity_mask, settings.bin_width, names[split:]))
    return features


def _region_grid(labels: sitk.Image, lo: np.ndarray, hi: np.ndarray, spacing: float) -> sitk.Image:
    """Isotropic grid in the label image's patient frame, centred on the region's box, one voxel of margin."""
    frame = patient_frame(direction_matrix(labels))
    box_lo, box_hi = frame_bounds(sub_grid(labels, lo, hi), frame)
    size = np.ceil((box_hi - box_lo) / spacing - 1e-6).astype(int) + 2
    return make_grid(frame @ ((box_lo + box_hi) / 2.0), tuple(int(s) for s in size), spacing, frame)


def _region_mask(
    labels: sitk.Image, label: int, lo: np.ndarray, hi: np.ndarray, grid: sitk.Image, config: RadiomicsConfig
) -> np.ndarray:
    """The region's mask on ``grid`` (z, y, x bool): trilinear interpolation of the binary mask, thresholded.

    Only the label image's box around the region (plus enough margin for the interpolation) is read.
    """
    margin = np.ceil(config.spacing_mm / np.asarray(labels.GetSpacing())).astype(int) + 1
    start = np.maximum(lo - margin, 0)
    stop = np.minimum(hi + margin, np.asarray(labels.GetSize()))
    crop = sitk.RegionOfInterest(labels, [int(s) for s in stop - start], [int(s) for s in start])
    binary = sitk.Cast(crop == label, sitk.sitkFloat32)
    fraction = sitk.GetArrayFromImage(resample_to_grid(binary, grid, "linear", 0.0))
    return fraction >= config.mask_threshold


def _in_range(values: np.ndarray, settings: RadiomicsModalityConfig) -> np.ndarray:
    lower, upper = settings.resegment_range
    inside = np.isfinite(values) & (values >= lower)
    return inside if upper is None else inside & (values <= upper)


def _extract(
    family: str, image: sitk.Image | None, mask: sitk.Image, bin_width: float, names: list[str]
) -> dict[str, float]:
    """One PyRadiomics feature class on ``image`` inside ``mask`` (label 1); values under ``names``."""
    from radiomics import firstorder, glcm, shape  # optional dependency, imported when radiomics is enabled

    if family == "shape":
        extractor = shape.RadiomicsShape(mask, mask, label=1)
        wanted = SHAPE_FEATURES
    elif family == "firstorder":
        extractor = firstorder.RadiomicsFirstOrder(image, mask, label=1, binWidth=bin_width, voxelArrayShift=0)
        wanted = FIRSTORDER_FEATURES
    else:
        extractor = glcm.RadiomicsGLCM(
            image, mask, label=1, binWidth=bin_width, distances=[1], symmetricalGLCM=True, weightingNorm=None
        )
        wanted = GLCM_FEATURES
    extractor.disableAllFeatures()
    for feature in wanted:
        extractor.enableFeatureByName(feature)
    result = extractor.execute()
    values = [float(result[feature]) - (3.0 if feature == "Kurtosis" else 0.0) for feature in wanted]
    return dict(zip(names, values, strict=True))
