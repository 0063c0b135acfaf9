"""Do the CT and the PET look like what they claim to be? Checked before the PET's unit detection.

A CT in Hounsfield units always holds air (about -1000 HU) around the body and in the airways; a PET (SUV or
Bq/mL) never holds values anywhere near -500. So the fraction of voxels at or below -500 tells the two apart,
whatever the scanner, the field of view or the PET's units:

- CT without air beside a "PET" with air: the two files were given the wrong way round. Recoverable
  (``ct-pet-swapped``): the default policy swaps them back; ``--strict`` refuses. Without this check the CT
  (bone at +1000) would pass the PET's Bq/mL detection and be "rescaled", with a warning naming the wrong
  problem.
- CT without air that looks like a PET itself (values in an SUV-like range, 0 < max < 100) beside a PET
  without air: two PETs, or a PET in the CT's place; refused, naming the CT file. A CT without air outside
  that range (constant images, a CT stored without its rescale intercept) is left to the pipeline as before.

Only every second voxel along each axis is counted: the fractions do not need more, and a 512 x 512 x 600 CT
then costs a 20 MB temporary instead of 160 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hecktor.core.types import InputError, RecoverableProblem

__all__ = ["AIR_HU", "ImageValues", "check_ct_pet_roles", "image_values"]

AIR_HU = -500.0
# A CT of the head and neck has far more than 1 % air voxels; a PET essentially none.
HAS_AIR_FRACTION = 0.01
NO_AIR_FRACTION = 0.001
# SUVs stay below ~100 (brain, bladder, hot tumours); a CT in HU reaches +1000 in bone.
PET_LIKE_MAX = 100.0
_STRIDE = 2


@dataclass(frozen=True)
class ImageValues:
    """What the role check needs of an image's values."""

    air_fraction: float  # fraction of (sampled) voxels at or below AIR_HU
    minimum: float
    maximum: float

    @property
    def has_air(self) -> bool:
        return self.air_fraction >= HAS_AIR_FRACTION

    @property
    def lacks_air(self) -> bool:
        return self.air_fraction < NO_AIR_FRACTION

    def describe(self) -> str:
        return (f"{self.air_fraction:.1%} of voxels at or below {AIR_HU:g}, values {self.minimum:.4g} to "
                f"{self.maximum:.4g}")


def image_values(image: sitk.Image) -> ImageValues:
    view = sitk.GetArrayViewFromImage(image)  # ``image`` outlives this view
    sample = view[::_STRIDE, ::_STRIDE, ::_STRIDE]
    air = np.count_nonzero(sample <= AIR_HU) / max(sample.size, 1)
    return ImageValues(float(air), float(view.min()), float(view.max()))


def check_ct_pet_roles(ct: sitk.Image, pet: sitk.Image, ct_path: Path, pet_path: Path) -> RecoverableProblem | None:
    """A ``ct-pet-swapped`` problem when the two were given the wrong way round; ``None`` when they look right.

    Raises:
        InputError: the CT looks like a PET and the PET does not look like a CT (not a swap).
    """
    ct_values, pet_values = image_values(ct), image_values(pet)
    if not ct_values.lacks_air:
        return None
    if pet_values.has_air:
        return RecoverableProblem(
            "ct-pet-swapped", ct_path,
            f"the CT looks like a PET and the PET like a CT: were they given the wrong way round? (CT {ct_path}: "
            f"{ct_values.describe()}, no air; PET {pet_path}: {pet_values.describe()}, air as in a CT)",
            f"swapped back: {pet_path} read as the CT and {ct_path} as the PET",
        )
    if 0.0 < ct_values.maximum < PET_LIKE_MAX and ct_values.minimum > AIR_HU:
        raise InputError(
            f"{ct_path}: the CT does not look like a CT in Hounsfield units but like a PET ({ct_values.describe()}: "
            f"no air at about -1000 HU), and the PET {pet_path} does not look like a CT either; two PETs given?")
    return None
