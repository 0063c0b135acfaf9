"""The per-case QC picture (hecktor.io.qc) and the batch's offline index page (hecktor.io.html_index).

Images are SYNTHETIC phantoms (hecktor.io.phantom) with their analytic reference labels (the shipped pipeline's
own labels are rendered in a slow test: running it costs ~7 s here), and, when ../shared/data is present, the real
STS_001 PET/CT with its expert mask. The pixel checks use facts that can be
worked out by hand from the layout constants and the phantom's analytic lesions (see each test).
"""

from __future__ import annotations

import html
import io
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from hecktor.core.geometry import direction_matrix
from hecktor.core.manifest import Manifest
from hecktor.core.types import Predictions
from hecktor.io.html_index import INDEX_NAME, QC_NAME, write_index_html
from hecktor.io.phantom import GTVN_SPHERES, GTVP_SPHERE, Phantom, PhantomGeometry, make_phantom
from hecktor.io.qc import (
    BANNER_RGB,
    CORONAL_MIP_BOX,
    FIGURE_SIZE_PX,
    GTVN_RGB,
    GTVP_RGB,
    SAGITTAL_MIP_BOX,
    QcInputs,
    render_qc_png,
    write_qc_png,
)
from hecktor.measure.lesions import measure
from hecktor.pipeline import Pipeline

STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts"
# Where the first lesion's axial CT slice is drawn (left, top, width, height): the first GTVp row of the layout.
FIRST_LESION_PANEL_BOX = (10, 692, 188, 188)


# --------------------------------------------------------------------------- helpers


def decode(png: bytes) -> np.ndarray:
    """(height, width, 3) uint8 pixels of a PNG."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        return np.asarray(image).copy()


def box_pixels(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, width, height = box
    return pixels[top:top + height, left:left + width]


def colour_mask(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.asarray(rgb, dtype=np.uint8), axis=-1)


def mip_scale_and_origin(ct: sitk.Image, box: tuple[int, int, int, int], horizontal_axis: int) -> tuple[float, float]:
    """Pixels per mm of a MIP panel and the left edge (px, in the box) of its image, for an axis-aligned CT:
    the image fills the box's height or width, keeps the aspect of the CT's extent and is centred."""
    size, spacing = np.asarray(ct.GetSize()), np.asarray(ct.GetSpacing())
    extent = size * spacing  # outer voxel faces
    scale = min(box[2] / extent[horizontal_axis], box[3] / extent[2])
    width = round(extent[horizontal_axis] * scale)
    return scale, (box[2] - width) // 2


def flipped_in_place(image: sitk.Image, axes: tuple[bool, bool, bool]) -> sitk.Image:
    """``image`` stored with the given index axes reversed: the same voxels at the same physical points."""
    flipped = sitk.Flip(image, list(axes))
    direction = direction_matrix(image).copy()
    corner = [n - 1 if flip else 0 for n, flip in zip(image.GetSize(), axes, strict=True)]
    direction[:, list(axes)] *= -1.0
    flipped.SetDirection(direction.flatten().tolist())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint(corner))
    return flipped


def visible_text(document: str) -> str:
    """The text content (entities decoded) of an HTML document."""
    parts: list[str] = []

    class Collector(HTMLParser):
        def handle_data(self, data: str) -> None:
            parts.append(data)

    Collector(convert_charrefs=True).feed(document)
    return "".join(parts)


def links_of(document: str) -> list[str]:
    found: list[str] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(value for name, value in attrs if name in ("href", "src") and value)

    Collector(convert_charrefs=True).feed(document)
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom_inputs(phantom: Phantom) -> QcInputs:
    """The SYNTHETIC phantom with its reference labels, as the bundled (untrained) engine's case would come."""
    return QcInputs(
        case_id="phantom", ct=phantom.ct, pet=phantom.pet, labels=phantom.labels,
        measurements=measure(phantom.labels, phantom.pet),
        predictions=Predictions(rfs_risk=-0.4605, hpv_probability=0.9693, hpv_positive=True),
        engine="pet-threshold", engine_trained_on_real_data=False,
        warnings=("PET values look like Bq/mL: SUVs of this case are approximate " * 3, "a second warning"),
    )


@pytest.fixture(scope="module")
def phantom_png(phantom_inputs: QcInputs) -> bytes:
    return render_qc_png(phantom_inputs)


@pytest.fixture(scope="module")
def trained_inputs(phantom_inputs: QcInputs) -> QcInputs:
    return replace(phantom_inputs, engine="ensemble", engine_trained_on_real_data=True, warnings=())


@pytest.fixture(scope="module")
def trained_pixels(trained_inputs: QcInputs) -> np.ndarray:
    return decode(render_qc_png(trained_inputs))


# --------------------------------------------------------------------------- the QC picture


def test_picture_decodes_at_the_documented_size(phantom_png: bytes) -> None:
    pixels = decode(phantom_png)
    assert pixels.shape == (FIGURE_SIZE_PX[1], FIGURE_SIZE_PX[0], 3)
    # Not blank: white page, black brain on the MIPs, grey CT in the lesion panels.
    assert pixels.std() > 40


def test_outlines_sit_on_the_projected_lesions(phantom: Phantom, phantom_png: bytes) -> None:
    """The phantom CT spans x in [-120, 120] mm and z in [-1.5, 328.5] mm (120 x 2 mm, 110 x 3 mm slices), so the
    coronal panel draws 1.62 px/mm, head up, the patient's right on the left. The GTVp is a 14 mm sphere at
    (8, -10, 140) mm: its outline (2 px inside the projected mask) is a ring of radius ~21-23 px around the
    point where that centre projects. The GTVn nodes are at x = -42 and 44 mm, on either side of it."""
    pixels = decode(phantom_png)
    (gx, gy, gz), radius = GTVP_SPHERE
    checks = ((CORONAL_MIP_BOX, 0, gx), (SAGITTAL_MIP_BOX, 1, gy))
    for box, axis, horizontal_mm in checks:
        panel = box_pixels(pixels, box)
        scale, image_left = mip_scale_and_origin(phantom.ct, box, axis)
        low_mm = -phantom.ct.GetSize()[axis] * phantom.ct.GetSpacing()[axis] / 2.0
        top_mm = phantom.ct.GetOrigin()[2] + (phantom.ct.GetSize()[2] - 0.5) * phantom.ct.GetSpacing()[2]
        expected = np.array([(top_mm - gz) * scale, image_left + (horizontal_mm - low_mm) * scale])
        rows, columns = np.nonzero(colour_mask(panel, GTVP_RGB))
        assert rows.size > 50, "no GTVp outline in the MIP panel"
        centre = np.array([rows.mean(), columns.mean()])
        assert np.abs(centre - expected).max() < 4.0, (centre, expected)
        distance = np.hypot(rows - expected[0], columns - expected[1])
        assert radius * scale - 5 < distance.max() < radius * scale + 5
    # Coronal: the node at x = -42 mm (patient's right) left of the GTVp, the one at x = +44 mm right of it.
    panel = box_pixels(pixels, CORONAL_MIP_BOX)
    node_columns = np.nonzero(colour_mask(panel, GTVN_RGB))[1]
    gtvp_columns = np.nonzero(colour_mask(panel, GTVP_RGB))[1]
    assert sorted(c[0] for c, _ in GTVN_SPHERES) == [-42.0, 44.0]
    assert node_columns.min() < gtvp_columns.min() and node_columns.max() > gtvp_columns.max()


@pytest.mark.parametrize("labels", ["empty", "none"])
def test_no_outline_without_lesions_and_the_picture_still_renders(
    phantom: Phantom, phantom_inputs: QcInputs, labels: str
) -> None:
    empty = sitk.Image(phantom.ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(phantom.ct)
    inputs = QcInputs(phantom_inputs.case_id, phantom.ct, phantom.pet, empty if labels == "empty" else None,
                      None, phantom_inputs.predictions, phantom_inputs.engine, False)
    pixels = decode(render_qc_png(inputs))
    assert pixels.shape == (FIGURE_SIZE_PX[1], FIGURE_SIZE_PX[0], 3)
    for box in (CORONAL_MIP_BOX, SAGITTAL_MIP_BOX):
        panel = box_pixels(pixels, box)
        assert not colour_mask(panel, GTVP_RGB).any() and not colour_mask(panel, GTVN_RGB).any()
        assert (panel.max(axis=-1) < 60).sum() > 1000, "the PET MIP (black brain) is missing"
    # No lesion panel: where the first lesion's CT slice goes (188 x 188 px from (10, 692)) the page stays white
    # (the phantom's picture fills it with CT: see test_lesion_panels_show_the_ct).
    assert (box_pixels(pixels, FIRST_LESION_PANEL_BOX).min(axis=-1) < 250).mean() < 0.05


def test_lesion_panels_show_the_ct(phantom_png: bytes) -> None:
    """The GTVp's CT slice (W400/L40) through its SUVmax voxel: neck soft tissue (40-55 HU) is mid-grey, the GTVp
    outline lies inside the panel, and the panel is filled (not white page)."""
    panel = box_pixels(decode(phantom_png), FIRST_LESION_PANEL_BOX)
    assert (panel.min(axis=-1) < 250).mean() > 0.9
    grey = (np.abs(panel.astype(int) - 132).max(axis=-1) <= 6)  # 40-55 HU -> 128-137
    assert grey.mean() > 0.3
    assert colour_mask(panel, GTVP_RGB).sum() > 100


def test_banner_shows_only_for_an_engine_not_trained_on_real_data(
    phantom_inputs: QcInputs, phantom_png: bytes, trained_pixels: np.ndarray
) -> None:
    assert not phantom_inputs.engine_trained_on_real_data
    # The banner fills the top 64 rows but for its white text.
    assert colour_mask(decode(phantom_png)[:64], BANNER_RGB).mean() > 0.8
    assert not colour_mask(trained_pixels, BANNER_RGB).any()


def test_mip_orientation_does_not_depend_on_how_the_ct_is_stored(
    phantom: Phantom, trained_inputs: QcInputs, trained_pixels: np.ndarray
) -> None:
    """The same CT and labels stored with x and z reversed (physical space unchanged) give the same MIPs."""
    axes = (True, False, True)
    ct, labels = flipped_in_place(phantom.ct, axes), flipped_in_place(phantom.labels, axes)
    # Hand check of the helper: voxel (x, y, z) of the original is voxel (119 - x, y, 109 - z) of the flipped
    # storage, at the same physical point, with the same value.
    for index in ((64, 55, 47), (10, 20, 30)):
        mirrored = (119 - index[0], index[1], 109 - index[2])
        assert np.allclose(phantom.ct.TransformIndexToPhysicalPoint(index), ct.TransformIndexToPhysicalPoint(mirrored))
        assert phantom.ct[index] == ct[mirrored] and phantom.labels[index] == labels[mirrored]
    assert phantom.labels[64, 55, 47] == 1  # (9, -9, 141) mm: inside the GTVp
    assert direction_matrix(ct)[0, 0] == -1.0 and direction_matrix(ct)[2, 2] == -1.0

    flipped_pixels = decode(render_qc_png(replace(trained_inputs, ct=ct, labels=labels)))
    for box in (CORONAL_MIP_BOX, SAGITTAL_MIP_BOX):
        as_stored, as_flipped = box_pixels(trained_pixels, box).astype(int), box_pixels(flipped_pixels, box).astype(int)
        differing = np.abs(as_stored - as_flipped).max(axis=-1) > 30
        assert differing.mean() < 0.002, differing.sum()
        assert colour_mask(as_flipped.astype(np.uint8), GTVP_RGB).sum() > 50


def test_an_oblique_pet_gives_the_same_mip(
    phantom: Phantom, trained_inputs: QcInputs, trained_pixels: np.ndarray
) -> None:
    """A PET stored on a grid rotated 20 degrees about z (resampled from the phantom's) is projected by the 3-D
    path and matches the axis-aligned PET's projection within the blur of one more resampling."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    grid = sitk.Image([80, 80, 110], sitk.sitkFloat32)
    grid.SetSpacing(phantom.pet.GetSpacing())
    grid.SetDirection(rotation.flatten().tolist())
    half = (np.asarray(grid.GetSize()) - 1) / 2.0 * np.asarray(grid.GetSpacing())
    grid.SetOrigin((np.array([0.0, 0.0, phantom.pet.GetOrigin()[2] + half[2]]) - rotation @ half).tolist())
    oblique = sitk.Resample(phantom.pet, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    aligned = box_pixels(trained_pixels, CORONAL_MIP_BOX).astype(int)
    rotated = box_pixels(decode(render_qc_png(replace(trained_inputs, pet=oblique))), CORONAL_MIP_BOX).astype(int)
    assert np.abs(aligned - rotated).mean() < 4.0
    assert (np.abs(aligned - rotated).max(axis=-1) > 60).mean() < 0.01


def test_write_qc_png_is_atomic_and_the_file_is_the_picture(phantom_inputs: QcInputs, tmp_path: Path) -> None:
    target = tmp_path / "case" / QC_NAME
    write_qc_png(phantom_inputs, target)
    assert [p.name for p in target.parent.iterdir()] == [QC_NAME]  # no temporary file left
    assert decode(target.read_bytes()).shape == (FIGURE_SIZE_PX[1], FIGURE_SIZE_PX[0], 3)
    assert target.stat().st_mode & 0o777 == 0o644


def test_real_sts_001_case(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real STS_001 PET/CT (PET already in SUV) with its expert CT mask shown as GTVp."""
    paths = {name: STS / f"STS_001_{name}.nii.gz" for name in ("CT_image", "PET_image", "CT_mask")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"real data absent: {', '.join(missing)} (see ../shared/data/README.md)")
    ct, pet = sitk.ReadImage(str(paths["CT_image"])), sitk.ReadImage(str(paths["PET_image"]))
    labels = sitk.Cast(sitk.ReadImage(str(paths["CT_mask"])) > 0, sitk.sitkUInt8)
    inputs = QcInputs("STS_001", ct, pet, labels, measure(labels, pet), None, "expert mask (STS_001_CT_mask)", True)
    target = tmp_path_factory.mktemp("qc_sts") / "STS_001" / QC_NAME
    start = time.perf_counter()
    write_qc_png(inputs, target)
    seconds = time.perf_counter() - start
    print(f"\nSTS_001 QC picture: {target} ({seconds:.2f} s)")
    pixels = decode(target.read_bytes())
    assert pixels.shape == (FIGURE_SIZE_PX[1], FIGURE_SIZE_PX[0], 3)
    assert colour_mask(box_pixels(pixels, CORONAL_MIP_BOX), GTVP_RGB).sum() > 50
    assert not colour_mask(pixels, BANNER_RGB).any()


@pytest.mark.slow
def test_render_time_on_a_512x512x200_ct() -> None:
    """The documented budget: under 2 s for a 512 x 512 x 200 CT (here with a 4 s margin for a loaded machine)."""
    phantom = make_phantom(PhantomGeometry(ct_size=(512, 512, 200), ct_spacing=(0.98, 0.98, 3.0),
                                           pet_size=(128, 128, 200), pet_spacing=(4.0, 4.0, 3.0), z_bottom_mm=-300.0))
    inputs = QcInputs("big", phantom.ct, phantom.pet, phantom.labels, None, None, "pet-threshold", False)
    render_qc_png(inputs)  # imports matplotlib and loads the fonts once
    start = time.perf_counter()
    render_qc_png(inputs)
    assert time.perf_counter() - start < 4.0


@pytest.mark.slow
def test_the_pipelines_own_labels_render(shipped_manifest: Manifest, phantom_case_dir: Path, phantom: Phantom) -> None:
    """The SYNTHETIC phantom through the shipped pipeline (pet-threshold), rendered as the batch will."""
    pipeline = Pipeline(shipped_manifest)
    result = pipeline.run(phantom_case_dir)
    inputs = QcInputs(result.case_id, phantom.ct, phantom.pet, result.labels, result.measurements, result.predictions,
                      result.engine, pipeline.engine.trained_on_real_data)
    pixels = decode(render_qc_png(inputs))
    assert colour_mask(pixels[:64], BANNER_RGB).mean() > 0.8
    for box in (CORONAL_MIP_BOX, SAGITTAL_MIP_BOX):
        assert colour_mask(box_pixels(pixels, box), GTVP_RGB).sum() > 50
        assert colour_mask(box_pixels(pixels, box), GTVN_RGB).sum() > 20


# --------------------------------------------------------------------------- the index page

# Case ids come from file names: markup and entities must show as text (a "/" cannot be in a file name).
CASE_IDS = ("CHUM-001", "a<script>alert(1)<&b", "MDA-017", "HGJ 042 & co")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, phantom_png: bytes) -> Path:
    """A batch output folder: two cases answered (with their QC picture), one failed, one skipped."""
    output_dir = tmp_path_factory.mktemp("batch")
    for case_id in (CASE_IDS[0], CASE_IDS[1]):
        (output_dir / case_id).mkdir()
        (output_dir / case_id / QC_NAME).write_bytes(phantom_png)
    rows = [
        {"case_id": CASE_IDS[0], "status": "ok", "error": None, "engine": "pet-threshold",
         "engine_trained_on_real_data": False, "gtvp_volume_ml": 11.916, "gtvn_volume_ml": 3.78, "rfs_risk": -0.4605,
         "hpv_probability": 0.9693, "hpv_positive": True},
        {"case_id": CASE_IDS[1], "status": "ok", "error": None, "engine": "pet-threshold",
         "engine_trained_on_real_data": False, "gtvp_volume_ml": 0.0, "gtvn_volume_ml": 1.5, "rfs_risk": 0.12,
         "hpv_probability": 0.2, "hpv_positive": False},
        {"case_id": CASE_IDS[2], "status": "failed", "error": "input refused: <ct> & <pet> grids do not overlap",
         "engine": "pet-threshold", "engine_trained_on_real_data": False},
        {"case_id": CASE_IDS[3], "status": "skipped", "error": None, "engine": "pet-threshold",
         "engine_trained_on_real_data": False},
    ]
    columns = ["case_id", "status", "error", "engine", "gtvp_volume_ml", "gtvn_volume_ml", "rfs_risk",
               "hpv_probability", "hpv_positive"]
    assert write_index_html(output_dir, rows, columns) == output_dir / INDEX_NAME
    return output_dir


def test_index_escapes_links_and_counts(index_dir: Path) -> None:
    page = (index_dir / INDEX_NAME).read_text(encoding="utf-8")
    assert "<script>" not in page and "alert(1)<" not in page
    assert html.escape(CASE_IDS[1]) in page
    assert "&lt;ct&gt; &amp; &lt;pet&gt;" in page
    text = visible_text(page)
    assert all(case_id in text for case_id in CASE_IDS)
    assert "cases: 4" in text and "ok: 2" in text and "failed: 1" in text and "skipped: 1" in text
    assert "NOT A TRAINED NETWORK: pet-threshold" in text
    # Self-contained: nothing fetched from elsewhere.
    assert "http://" not in page and "https://" not in page and "<link" not in page
    # Every link is relative and resolves to a QC picture; only the two answered cases have one.
    links = links_of(page)
    assert len(links) == 4  # an <a href> and an <img src> per answered case
    for link in links:
        assert not link.startswith("/") and "://" not in link
        assert (index_dir / unquote(link)).is_file()
    assert {unquote(link).split("/")[0] for link in links} == {CASE_IDS[0], CASE_IDS[1]}
    failed_row = next(line for line in page.splitlines() if "MDA-017" in line)
    assert 'class="failed"' in failed_row and "<img" not in failed_row
    assert [p.name for p in index_dir.iterdir() if p.is_file()] == [INDEX_NAME]  # no temporary file left


def test_index_has_no_note_when_every_engine_is_trained(tmp_path: Path) -> None:
    rows = [{"case_id": "X-1", "status": "failed", "error": "boom", "engine": "ensemble",
             "engine_trained_on_real_data": True}]
    page = write_index_html(tmp_path, rows, ["case_id", "status", "error"]).read_text(encoding="utf-8")
    assert "NOT A TRAINED NETWORK" not in page and "cases: <b>1</b>" in page


def _chromium() -> str:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    return executable


def _run_chromium(executable: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    # A profile of its own: other chromium processes on the machine (or a crashed one's lock) are left alone.
    command = [executable, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_index_renders_in_a_headless_browser(index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    executable = _chromium()
    url = (index_dir / INDEX_NAME).as_uri()
    work = tmp_path_factory.mktemp("chromium")
    screenshot = work / "index.png"
    shot = _run_chromium(executable, work / "profile", f"--screenshot={screenshot}", "--window-size=1280,900",
                         "--hide-scrollbars", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    print(f"\nindex.html screenshot: {screenshot}")
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(float)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    # The thumbnails loaded: the QC pictures' banner red is on screen.
    assert colour_mask(pixels.astype(np.uint8), BANNER_RGB).sum() > 200
    dom = _run_chromium(executable, work / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = visible_text(dom.stdout)
    assert all(case_id in text for case_id in CASE_IDS)


def test_the_modules_import_without_matplotlib() -> None:
    """Only rendering needs matplotlib (requirements/batch.txt): importing the modules must not."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'matplotlib':\n"
            "            raise ImportError('matplotlib blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import hecktor.io.qc, hecktor.io.html_index\n"
            "assert 'matplotlib' not in sys.modules\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               cwd=Path(__file__).resolve().parents[1], check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
