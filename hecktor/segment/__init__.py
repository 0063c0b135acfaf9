"""Segmentation engines behind one interface, chosen by the model manifest."""

from __future__ import annotations

from typing import Protocol

from hecktor.core.manifest import Manifest
from hecktor.core.types import Probabilities, Roi

__all__ = ["SegmentationEngine", "build_engine"]


class SegmentationEngine(Protocol):
    """Turns a 1 mm ROI into per-class probabilities on the same grid.

    ``deadline`` is a ``time.monotonic()`` value by which the whole case must be done; an engine
    whose cost can be traded for accuracy (the ensemble) plans against it, others ignore it.
    """

    name: str
    trained_on_real_data: bool

    def segment(self, roi: Roi, deadline: float | None = None) -> Probabilities: ...


def build_engine(manifest: Manifest, device: str | None = None) -> SegmentationEngine:
    """Build the engine the manifest selects; weights are loaded (and hash-checked) here, once.

    ``device`` ("cpu", "cuda") pins where networks run; default: CUDA when available, else CPU.
    """
    if manifest.engine == "ensemble":
        from hecktor.segment.ensemble import load_ensemble

        assert manifest.ensemble is not None  # load_manifest guarantees it
        return load_ensemble(manifest.ensemble, manifest.weights_dir, device=device)
    from hecktor.segment.pet_threshold import PetThresholdEngine

    return PetThresholdEngine(manifest.pet_threshold)
