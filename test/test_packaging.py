"""Packaging: the wheel holds the package and nothing else, and every image flavour's pins exist on PyPI for
the image's platform, so that a pin that does not exist fails here and not in the middle of an image build.

The dry runs ask PyPI alone (``PIP_CONFIG_FILE=/dev/null`` and ``--isolated``: this machine's pip config adds
local wheel folders, e.g. a CPU torch that PyPI does not serve under that name). They resolve for the image's
platform (CPython 3.11, Debian bookworm's glibc 2.36, x86_64) without installing anything; with pip >= 26 and
``--use-feature=fast-deps`` they read each wheel's metadata with HTTP range requests instead of downloading it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYPI = "https://pypi.org/simple/"
# The manylinux tags a wheel may carry to install on Debian bookworm (glibc 2.36): pip takes the list as given,
# so every accepted glibc level is named (manylinux2014 also admits the legacy manylinux2010 and manylinux1).
IMAGE_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)] + ["manylinux2014_x86_64", "any"]
# requirement file -> (packages that must be resolved at these versions, packages that must not be there)
FLAVOURS = {
    "requirements/core.txt": ({"numpy": "2.4.6", "simpleitk": "2.5.7", "pydantic": "2.14.3",
                               "pyradiomics-bhklab": "3.1.4", "pywavelets": "1.9.0", "docopt": "0.6.2"},
                              {"torch", "onnxruntime", "onnxruntime-gpu"}),
    # The CUDA 12 build with CUDA 12.6-era libraries (README, Containers): nothing of CUDA 13, no nvJitLink.
    "requirements/onnxruntime.txt": ({"onnxruntime-gpu": "1.26.0", "nvidia-cudnn-cu12": "9.6.0.74",
                                      "nvidia-cublas-cu12": "12.6.4.1", "nvidia-cuda-runtime-cu12": "12.6.77",
                                      "nvidia-cufft-cu12": "11.0.12.1", "nvidia-curand-cu12": "10.3.7.77"},
                                     {"torch", "onnxruntime", "monai", "triton", "nvidia-nvjitlink-cu12",
                                      "nvidia-cudnn-cu13", "nvidia-cuda-runtime", "nvidia-cublas", "cuda-toolkit"}),
    "requirements/torch.txt": ({"torch": "2.13.0", "safetensors": "0.8.0", "monai": "1.6.1"},
                               {"onnxruntime", "onnxruntime-gpu"}),
    # The local set (README's first set-up command): no torch, so nothing of CUDA is downloaded.
    "requirements.txt": ({"onnxruntime": "1.26.0", "matplotlib": "3.11.2", "tqdm": "4.70.1"},
                         {"onnxruntime-gpu", "torch", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "cuda-toolkit",
                          "triton"}),
    "requirements/ray.txt": ({"ray": "2.60.0"}, {"torch", "onnxruntime-gpu"}),
    # The training image (training/Dockerfile): nnU-Net v2 on the product's pins, the CUDA 13 torch.
    "training/requirements.txt": ({"nnunetv2": "2.8.1", "torch": "2.13.0", "torchvision": "0.28.0",
                                   "numpy": "2.4.6", "scipy": "1.17.1", "simpleitk": "2.5.7", "pandas": "3.1.1",
                                   "pydantic": "2.14.3", "monai": "1.6.1", "onnx": "1.23.2",
                                   "acvl-utils": "0.2.6", "scikit-survival": "0.28.0",
                                   "imbalanced-learn": "0.14.2"},
                                  {"onnxruntime", "onnxruntime-gpu"}),
}
# Pins that PyPI publishes as an sdist only: a dry run for another platform takes wheels alone, so the test builds
# these from PyPI's sdist first (their build tools binary, constrained by requirements/sdists-build.txt) and offers
# the wheels with --find-links. requirements/sdists.txt (pyradiomics-bhklab with C extensions, docopt) is part of
# the core and so of every set: the inference image builds those wheels in its "sdists" stage (Dockerfile), the
# training image lets pip build them and acvl-utils (training/Dockerfile: --only-binary=:all: --no-binary=NAMES).
CORE_SDISTS = ("pyradiomics-bhklab", "docopt")
SDIST_ONLY = {name: CORE_SDISTS for name in FLAVOURS if name != "requirements/ray.txt"}  # ray.txt: ray alone
SDIST_ONLY["training/requirements.txt"] = ("acvl-utils", *CORE_SDISTS)
# A wheel built here carries the generic tag of a local build (like the one the image's sdists stage builds on the
# image's own Python), which PyPI never serves: the dry runs that offer such wheels accept that tag too.
LOCAL_BUILD_PLATFORM = "linux_x86_64"
# The local CPU onnxruntime and the image's onnxruntime-gpu are one release (tests run the version that ships).
SAME_RELEASE = ("requirements.txt", "onnxruntime", "requirements/onnxruntime.txt", "onnxruntime-gpu")


def _pip(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # No pip configuration at all: neither this machine's extra indexes and wheel folders nor its constraints.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def _cert_args() -> list[str]:
    return ["--cert", str(CA_BUNDLE)] if CA_BUNDLE.is_file() else []


def _all_pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of one requirement file and of the files it includes (``-r``)."""
    found = _pins(path)
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            found |= _all_pins(path.parent / line[3:].strip())
    return found


def _pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of one requirement file (not those of the files it includes)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


@pytest.fixture(scope="module")
def sdist_wheels(pypi: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of wheels built from the sdist-only pins, one per distinct set of pins (built once per module)."""
    built: dict[tuple[str, ...], Path] = {}
    folders = {}
    for requirements, names in SDIST_ONLY.items():
        if names not in built:
            built[names] = tmp_path_factory.mktemp("sdist-wheels")
            _build_sdists(requirements, names, built[names])
        folders[requirements] = built[names]
    return folders


def _build_sdists(requirements: str, names: tuple[str, ...], wheel_dir: Path) -> None:
    """Build ``names`` (pinned by ``requirements`` or a file it includes) into ``wheel_dir``, from PyPI's sdists."""
    pins = _all_pins(REPO / requirements)
    result = _pip("wheel", "--isolated", "--no-cache-dir", *_cert_args(), "--index-url", PYPI, "--no-deps",
                  f"--no-binary={','.join(names)}", "--build-constraint", str(REPO / "requirements/sdists-build.txt"),
                  "--wheel-dir", str(wheel_dir), *(f"{name}=={pins[name]}" for name in names))
    assert result.returncode == 0, f"{requirements}: cannot build {names} from PyPI's sdist:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def pypi() -> None:
    """Skip (with the reason) only when PyPI cannot be reached at all; any other failure is a test failure."""
    context = ssl.create_default_context(cafile=str(CA_BUNDLE) if CA_BUNDLE.is_file() else None)
    try:
        with urllib.request.urlopen(PYPI + "pip/", timeout=20, context=context) as response:
            response.read(1)
    except OSError as exc:
        pytest.skip(f"PyPI ({PYPI}) cannot be reached from here: {exc}")


@pytest.fixture(scope="module")
def fast_deps() -> list[str]:
    """``--use-feature=fast-deps`` where this pip has it (it only changes how metadata is fetched): pip refuses
    an unknown feature name with exit status 2 even when only asked for ``--help``."""
    probe = _pip("install", "--use-feature=fast-deps", "--help", timeout=60)
    return ["--use-feature=fast-deps"] if probe.returncode == 0 else []


@pytest.mark.parametrize("requirements", list(FLAVOURS))
def test_pins_resolve_on_pypi_for_the_image_platform(pypi: None, fast_deps: list[str], sdist_wheels: dict[str, Path],
                                                     tmp_path: Path, requirements: str) -> None:
    report = tmp_path / "report.json"
    platforms = [arg for platform in IMAGE_PLATFORMS for arg in ("--platform", platform)]
    start = time.perf_counter()
    find_links = []
    if requirements in sdist_wheels:
        find_links = ["--find-links", str(sdist_wheels[requirements])]
        platforms += ["--platform", LOCAL_BUILD_PLATFORM]
    result = _pip("install", "--isolated", "--dry-run", "--ignore-installed", "--no-cache-dir", *fast_deps,
                  *_cert_args(), "--index-url", PYPI, *find_links, "--target", str(tmp_path / "target"),
                  "--only-binary=:all:",
                  "--python-version", "3.11", *platforms, "--report", str(report), "-r", str(REPO / requirements))
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"{requirements} does not resolve on PyPI:\n{result.stderr[-3000:]}"

    resolved = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item
                for item in json.loads(report.read_text())["install"]}
    must, must_not = FLAVOURS[requirements]
    for name, version in must.items():
        assert name in resolved, f"{requirements}: {name} not resolved"
        assert resolved[name]["metadata"]["version"] == version, f"{requirements}: {name}"
    assert not must_not & resolved.keys(), f"{requirements} pulls in {sorted(must_not & resolved.keys())}"
    # From PyPI's file host, as the image build will fetch them (the sdist-only pins: built here from PyPI's sdist).
    sdist_only = SDIST_ONLY.get(requirements, ())
    hosts = {item["download_info"]["url"].split("/")[2] for name, item in resolved.items() if name not in sdist_only}
    assert hosts == {"files.pythonhosted.org"}, hosts
    print(f"{requirements}: {len(resolved)} distributions resolved in {seconds:.1f} s")


def _copy_source_tree(target: Path) -> Path:
    """The repository as a checkout has it (training/, bench/, test/ included, which setuptools must leave out),
    copied so that the build's own build/ and *.egg-info folders do not land in the working tree."""
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "output", "__pycache__", "*.pyc",
                                    "*.egg-info", ".pytest_cache", ".ruff_cache", "*.tar.gz*", ".hecktor2025-*")
    return Path(shutil.copytree(REPO, target, ignore=ignore))


def test_wheel_holds_the_package_and_nothing_else(tmp_path: Path) -> None:
    source = _copy_source_tree(tmp_path / "src")
    try:
        import setuptools

        # The venv's setuptools builds offline; without it pip fetches one into an isolated build environment.
        isolation = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 61 else []
    except ImportError:
        isolation = []
    result = _pip("wheel", "--no-deps", *isolation, "--wheel-dir", str(tmp_path / "wheels"), str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("hecktor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"hecktor", "hecktor-0.1.0.dist-info"}, top_level
    packaged = {name for name in names if name.startswith("hecktor/")}
    expected = {path.relative_to(REPO).as_posix() for path in (REPO / "hecktor").rglob("*.py")
                if "__pycache__" not in path.parts}
    assert packaged == expected, (sorted(packaged - expected), sorted(expected - packaged))

    entry_points = zipfile.ZipFile(wheel).read("hecktor-0.1.0.dist-info/entry_points.txt").decode()
    assert "hecktor-inference = hecktor.apps.cli:inference_main" in entry_points
    metadata = zipfile.ZipFile(wheel).read("hecktor-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Python: >=3.11" in metadata


def test_requirement_files_include_the_core_once() -> None:
    """The image flavours and the local set share requirements/core.txt instead of repeating its pins."""
    pins = _pins
    core = pins(REPO / "requirements/core.txt")
    for flavour in ["onnxruntime", "torch"]:
        text = (REPO / f"requirements/{flavour}.txt").read_text()
        assert "-r core.txt" in text.splitlines(), flavour
        assert not core.keys() & pins(REPO / f"requirements/{flavour}.txt").keys(), flavour
    local = (REPO / "requirements.txt").read_text().splitlines()
    assert "-r requirements/core.txt" in local and "-r requirements/torch.txt" not in local
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    assert {"-r requirements.txt", "-r requirements/torch.txt", "-r requirements/ray.txt"} <= set(dev)
    local_file, local_name, image_file, image_name = SAME_RELEASE
    assert pins(REPO / local_file)[local_name] == pins(REPO / image_file)[image_name]
    # Packages that the package never imports stay out (dynamic-network-architectures drags in timm/torchvision).
    every_pin = {name for path in (REPO / "requirements").glob("*.txt") for name in pins(path)}
    every_pin |= pins(REPO / "requirements.txt").keys()
    assert not every_pin & {"dynamic-network-architectures", "psutil", "torchvision", "timm"}


def test_training_set_builds_on_the_product_pins() -> None:
    """The training image installs the product's runtime pins (requirements/torch.txt, itself on the core) plus
    what training adds, without repeating or overriding any of them; the dev set (CI) includes it; the image build
    lets pip build exactly the sdist-only pins from source."""
    training = REPO / "training/requirements.txt"
    assert "-r ../requirements/torch.txt" in training.read_text().splitlines()
    product = _pins(REPO / "requirements/core.txt") | _pins(REPO / "requirements/torch.txt")
    assert not product.keys() & _pins(training).keys(), sorted(product.keys() & _pins(training).keys())
    # Pinned in both the local set and the training set: one version.
    for name in _pins(REPO / "requirements.txt").keys() & _pins(training).keys():
        assert _pins(REPO / "requirements.txt")[name] == _pins(training)[name], name
    assert "-r training/requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    dockerfile = (REPO / "training/Dockerfile").read_text()
    assert f"--no-binary={','.join(SDIST_ONLY['training/requirements.txt'])} " in dockerfile
    assert "PIP_CONSTRAINT=/opt/hecktor/requirements/sdists-build.txt" in dockerfile


def test_sdist_only_pins_are_built_in_their_own_stage() -> None:
    """requirements/sdists.txt holds exactly the core's source-only pins; the inference image builds them in a
    stage with the compiler (without build isolation, from sdists-build.txt, whose numpy is the runtime pin) and
    installs only the wheels; the runtime stage has no compiler."""
    assert set(_pins(REPO / "requirements/sdists.txt")) == set(CORE_SDISTS)
    assert "-r sdists.txt" in (REPO / "requirements/core.txt").read_text().splitlines()
    build = _pins(REPO / "requirements/sdists-build.txt")
    assert build["numpy"] == _pins(REPO / "requirements/core.txt")["numpy"]
    stages = re.split(r"^FROM ", (REPO / "Dockerfile").read_text(), flags=re.MULTILINE)
    (sdists,) = [stage for stage in stages if stage.startswith("python AS sdists")]
    (image,) = [stage for stage in stages if stage.startswith("python AS image")]
    assert "gcc" in sdists and "gcc" not in image
    assert "--no-build-isolation" in sdists and "-r /src/requirements/sdists-build.txt" in sdists
    assert "COPY --from=sdists /sdist-wheels/" in image and "--only-binary=:all: --find-links" in image
