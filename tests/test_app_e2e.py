"""A person runs SSA from the FiftyOne App, in a real browser, and sees the result.

The plugin is installed as the README says (the repository linked into a plugins directory
named by ``FIFTYONE_PLUGINS_DIR``), the App server runs in a subprocess on loopback against
this test run's private database, and headless Debian Chromium (driven by Playwright) opens a
dataset whose samples carry a coarse Segmentation (with mask targets) and instance masks. In
the Operator Browser it runs ``@fiftyone-ssa/ssa/run_ssa`` with both field branches, then checks
the new fields in the sidebar and that filtering ``ssa_masks`` by a predicted class narrows the
grid to the samples FiftyOne's own query finds. Screenshots go to ``test-artifacts/app_e2e/``.

Skipped only when Chromium or Playwright is not installed (``scripts/setup.sh`` installs both).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image

from tests.e2e.app_server import app_server
from tests.e2e.browser import browser_unavailable, chromium_page
from tests.scenes import SCENE_CLASSES, coarsen

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable())),
]

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "app_e2e"
NUM_SAMPLES = 6
WITH_PERSON = {0, 2, 3}  # the samples that show a person
PERSON = 4  # SCENE_CLASSES id
UI_TIMEOUT_MS = 30_000
SAMPLE_COUNT = re.compile(r"^\s*(\d+)\s+samples?\s*$")


def _region_instances(gt: np.ndarray) -> list[np.ndarray]:
    """One instance mask per connected class region (each class is one region here)."""
    return [gt == c for c in np.unique(gt)]


def _scene(rng: np.random.Generator, with_person: bool, height=96, width=128):
    """Background above a road, a car, and (optionally) a person; returns image, gt, masks."""
    gt = np.zeros((height, width), np.uint8)
    gt[height // 2 :] = 1  # road
    y, x = int(rng.integers(40, 60)), int(rng.integers(8, 40))
    gt[y : y + 24, x : x + 40] = 2  # car
    if with_person:
        y, x = int(rng.integers(16, 40)), int(rng.integers(72, 96))
        gt[y : y + 40, x : x + 20] = PERSON
    palette = rng.integers(0, 256, size=(len(SCENE_CLASSES), 3))
    image = np.clip(palette[gt] + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    return image, gt, _region_instances(gt)


def _detections(masks: list[np.ndarray]) -> fo.Detections:
    dets = []
    for mask in masks:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        box = [x0 / w, y0 / h, (x1 - x0 + 1) / w, (y1 - y0 + 1) / h]
        dets.append(
            fo.Detection(label="region", bounding_box=box, mask=mask[y0 : y1 + 1, x0 : x1 + 1])
        )
    return fo.Detections(detections=dets)


@pytest.fixture
def app_dataset(make_dataset, tmp_path):
    """Samples with a coarse semantic field (mask targets) and an instance-mask field."""
    rng = np.random.default_rng(0)
    dataset = make_dataset()
    samples = []
    for i in range(NUM_SAMPLES):
        image, gt, masks = _scene(rng, with_person=i in WITH_PERSON)
        path = tmp_path / f"street_{i}.png"
        Image.fromarray(image).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                coarse=fo.Segmentation(mask=coarsen(gt, rng, factor=8, noise=0.0)),
                instances=_detections(masks),
            )
        )
    dataset.add_samples(samples)
    dataset.mask_targets = {"coarse": SCENE_CLASSES}
    dataset.save()
    return dataset


@pytest.fixture
def app_env(tmp_path):
    """The App server's environment: this run's database and the plugin linked in."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fiftyone-ssa").symlink_to(REPO_ROOT, target_is_directory=True)
    models = tmp_path / "models"  # empty: the SAM / Segformer presets are missing
    models.mkdir()
    return {
        **os.environ,
        "FIFTYONE_DATABASE_NAME": os.environ["FIFTYONE_DATABASE_NAME"],
        "FIFTYONE_PLUGINS_DIR": str(plugins),
        "FIFTYONE_SSA_MODELS_DIR": str(models),
        "FIFTYONE_DO_NOT_TRACK": "true",
    }


def _shown_count(page) -> int:
    text = page.locator('[data-cy="entry-counts"]').inner_text()
    match = SAMPLE_COUNT.match(text)
    assert match, f"unexpected sample count text {text!r}"
    return int(match.group(1))


def _wait_for_count(page, count: int) -> None:
    page.locator('[data-cy="entry-counts"]').get_by_text(
        re.compile(rf"^\s*{count}\s+samples?\s*$")
    ).wait_for(timeout=UI_TIMEOUT_MS)


def _dismiss_promotion(page) -> None:
    """Closes the "Explore Enterprise" pop-up where the App shows one."""
    dismiss = page.get_by_role("button", name="Dismiss")
    try:
        dismiss.wait_for(timeout=3_000)
        dismiss.click()
    except Exception:  # no pop-up in this FiftyOne version
        pass


def _sidebar_field(page, name: str):
    return page.locator(f'[data-cy="sidebar-field-{name}"]')


def test_run_ssa_from_the_app_and_filter_by_predicted_class(app_dataset, app_env):
    outputs = ["ssa", "ssa_masks", "ssa_branch"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    def shot(page, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    with (
        app_server(app_env, ARTIFACTS / "server.log") as url,
        chromium_page() as page,
    ):
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            # The App keeps a live connection open: wait for `load`, never for network idle.
            page.goto(f"{url}/datasets/{app_dataset.name}", wait_until="load")
            _wait_for_count(page, NUM_SAMPLES)
            _dismiss_promotion(page)
            _sidebar_field(page, "coarse").wait_for()
            _sidebar_field(page, "instances").wait_for()
            for name in outputs:
                assert _sidebar_field(page, name).count() == 0
            shot(page, "01_dataset")

            page.keyboard.press("`")  # the Operator Browser
            page.get_by_placeholder("Search operations by name...").fill("Semantic Segment")
            page.keyboard.press("Enter")
            execute = page.get_by_role("button", name="Execute")
            execute.wait_for()
            # Defaults name the SAM / Segformer presets, whose weights are missing here.
            page.get_by_text("missing weights for 'sam-vit-h'").wait_for()
            assert execute.is_disabled()
            page.get_by_text("Existing Detections field with instance masks").click()
            page.get_by_text("Existing Segmentation field").click()
            page.get_by_text("missing weights for").first.wait_for(state="detached")
            shot(page, "02_run_ssa_form")
            assert execute.is_enabled()
            execute.click()

            page.get_by_text("SSA finished").wait_for(timeout=120_000)
            labelled = page.get_by_text("Samples labelled").locator("xpath=..")
            assert str(NUM_SAMPLES) in labelled.inner_text()
            shot(page, "03_ssa_finished")
            page.get_by_role("button", name="Close").click()

            for name in outputs:
                _sidebar_field(page, name).wait_for()
            assert _shown_count(page) == NUM_SAMPLES
            thumbnails = page.locator('[data-cy="fo-grid"] [data-cy="looker"]')
            assert thumbnails.count() == NUM_SAMPLES
            page.locator('[data-cy="checkbox-ssa"]').click()  # show the SSA map on the grid
            page.wait_for_timeout(1_000)
            shot(page, "04_new_fields")

            # What FiftyOne's own query finds, and what the scenes were built with.
            person = SCENE_CLASSES[PERSON]
            expected = app_dataset.match(F("ssa_masks.detections.label").contains(person))
            assert expected.count() == len(WITH_PERSON)

            page.locator('[data-cy="sidebar-field-arrow-enabled-ssa_masks"]').click()
            search = page.locator('[data-cy="selector-sidebar-search-ssa_masks.detections.label"]')
            search.click()
            search.fill(person)
            page.keyboard.press("Enter")
            _wait_for_count(page, len(WITH_PERSON))
            page.wait_for_timeout(1_000)  # let the grid re-render before the screenshot
            shot(page, "05_filtered_by_person")
            assert _shown_count(page) == len(WITH_PERSON) < NUM_SAMPLES
            assert thumbnails.count() == len(WITH_PERSON)
        except Exception:
            shot(page, "failure")
            raise
