"""Shared fixtures. Phantoms are SYNTHETIC (hecktor.io.phantom); real data is read from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from hecktor.core.manifest import Manifest, load_manifest
from hecktor.io.phantom import Phantom, PhantomGeometry, make_phantom, write_platform_case


@pytest.fixture(scope="session")
def shipped_manifest() -> Manifest:
    """The bundled ``model_weights/manifest.json``: the parameters the product runs with."""
    return load_manifest()


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture(scope="session")
def phantom_case_dir(tmp_path_factory: pytest.TempPathFactory, phantom: Phantom) -> Path:
    folder = tmp_path_factory.mktemp("phantom_case")
    write_platform_case(phantom, folder)
    return folder


@pytest.fixture(scope="session")
def headless_phantom() -> Phantom:
    """A SYNTHETIC neck-only field of view: the PET shows no brain."""
    return make_phantom(PhantomGeometry(ct_size=(120, 120, 55), pet_size=(64, 64, 55), z_bottom_mm=20.0))
