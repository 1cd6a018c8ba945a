"""A person uses the plugin in the FiftyOne App, in a real browser, and sees the result.

The plugin is installed as the README says (the repository linked into a plugins directory
named by ``FIFTYONE_PLUGINS_DIR``), one App server per module runs in a subprocess on loopback
against this test run's private database, and headless Debian Chromium (driven by Playwright)
opens datasets whose samples carry a Segmentation with mask targets and instance masks:

- the run form names the missing weights' path as written (Markdown left it mangled);
- ``@fiftyone-ssa/ssa/run_ssa`` runs from the Operator Browser with both field branches; the
  finished dialog, the new sidebar fields, a colour per class on the grid, and filtering
  ``ssa_masks`` by a predicted class narrowing the grid to the samples FiftyOne's own query
  finds;
- the Evaluate mIoU form opens with its ground truth chosen and one message at a time, and runs;
- the Model Evaluation panel lists mIoU and per-class IoU of an ``evaluate_miou`` run;
- the review loop: the review queue (``review-ssa_masks``) opened from the saved views, its most
  doubtful mask relabelled in the modal's annotation mode (the App's own JSON patch to the
  server), ``apply_review`` run from the Operator Browser, and the mask's pixels of ``ssa``
  holding the new class, in the database and in the new class's colour on the grid.

Screenshots go to ``test-artifacts/app_e2e/`` (``<test name>-NN-<step>.png``). Skipped only when
Chromium or Playwright is not installed (``scripts/setup.sh`` installs both).
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image

from fiftyone_ssa import apply_ssa, evaluate_miou, review_queue
from fiftyone_ssa.labels import detection_full_mask
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
GREY = 128  # the images are flat: on the grid, every colour comes from the labels drawn
UI_TIMEOUT_MS = 30_000
REVIEW_SIZE = 5  # masks in the review queue
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
    image = np.full((height, width, 3), GREY, np.uint8)
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
    """Samples with a ground truth (``gt``), a coarse semantic field and instance masks;
    ``gt`` and ``coarse`` have mask targets."""
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
                gt=fo.Segmentation(mask=gt),
                coarse=fo.Segmentation(mask=coarsen(gt, rng, factor=8, noise=0.0)),
                instances=_detections(masks),
            )
        )
    dataset.add_samples(samples)
    dataset.mask_targets = {"gt": SCENE_CLASSES, "coarse": SCENE_CLASSES}
    dataset.save()
    return dataset


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """An empty models directory (the SAM / Segformer presets are missing), named as
    FiftyOne's model zoo is: ``__models__`` is what Markdown turned bold."""
    path = tmp_path_factory.mktemp("home") / "fiftyone" / "__models__"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, models_dir):
    """The App server of this module, with this run's database and the plugin linked in."""
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "fiftyone-ssa").symlink_to(REPO_ROOT, target_is_directory=True)
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_NAME": os.environ["FIFTYONE_DATABASE_NAME"],
        "FIFTYONE_PLUGINS_DIR": str(plugins),
        "FIFTYONE_SSA_MODELS_DIR": str(models_dir),
        "FIFTYONE_DO_NOT_TRACK": "true",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    fo.list_datasets()  # the database is up before the server starts (they would race for it)
    with app_server(env, ARTIFACTS / "server.log") as url:
        yield url


class Screens:
    """Numbered screenshots of one test: ``<prefix>-NN-<name>.png``."""

    def __init__(self, page, prefix: str):
        self.page, self.prefix, self.count = page, prefix, 0

    def __call__(self, name: str) -> None:
        self.count += 1
        path = ARTIFACTS / f"{self.prefix}-{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path))


@pytest.fixture
def app(app_url, request):
    """``open(dataset)`` -> a Chromium page showing the dataset in the App, and its
    :class:`Screens`; the page's last state is kept as ``<test>-NN-end.png``."""
    with chromium_page() as page:
        page.set_default_timeout(UI_TIMEOUT_MS)
        prefix = request.node.name.removeprefix("test_")
        shot = Screens(page, prefix)

        def open_dataset(dataset) -> tuple:
            # The App keeps a live connection open: wait for `load`, never for network idle.
            page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load")
            _wait_for_count(page, len(dataset))
            _dismiss_promotion(page)
            return page, shot

        yield open_dataset
        shot("end")


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


def _expect(locator):
    """Playwright's ``expect`` (retries until the UI settles), imported where it is used: the
    module is collected, and skipped, without Playwright."""
    from playwright.sync_api import expect

    return expect(locator)


def _open_operator(page, search: str):
    """Opens the form of the first operator the Operator Browser finds for ``search``;
    returns its Execute button."""
    page.keyboard.press("`")  # the Operator Browser
    page.get_by_placeholder("Search operations by name...").fill(search)
    page.keyboard.press("Enter")
    execute = page.get_by_role("button", name="Execute")
    execute.wait_for()
    return execute


def _alerts(page) -> list[str]:
    """The texts of the messages (errors, warnings) the open form shows."""
    alerts = page.locator('[role="presentation"] [role="alert"]')
    return [alerts.nth(i).inner_text().strip() for i in range(alerts.count())]


def _show_only(page, shown: str, fields: list[str]) -> None:
    """Ticks ``shown`` and unticks the other label ``fields`` on the grid."""
    for name in fields:
        box = page.locator(f'[data-cy="checkbox-{name}"] input')
        if box.is_checked() != (name == shown):
            page.locator(f'[data-cy="checkbox-{name}"]').click()
    page.wait_for_timeout(1_500)  # the thumbnails redraw


def _label_colors(thumbnail, min_share: float = 0.03) -> list[tuple[int, int, int]]:
    """The colours covering at least ``min_share`` of a thumbnail (quantised to 1/8 steps)."""
    pixels = np.asarray(Image.open(io.BytesIO(thumbnail.screenshot())).convert("RGB"))
    quantised = (pixels.reshape(-1, 3) // 32).astype(np.int64)
    codes, counts = np.unique(quantised @ [64, 8, 1], return_counts=True)
    keep = codes[counts >= min_share * len(quantised)]
    return [(int(c) // 64, int(c) // 8 % 8, int(c) % 8) for c in keep]


def test_run_form_shows_the_models_path_as_written(app, app_dataset, models_dir):
    page, shot = app(app_dataset)
    _open_operator(page, "Semantic Segment")
    # Defaults name the SAM / Segformer presets, whose weights are missing here.
    message = page.get_by_role("alert").filter(has_text="missing weights for 'sam-vit-h'")
    message.wait_for()
    shot("missing_weights")
    text = message.inner_text()
    assert f"{models_dir}/sam-vit-h/sam_vit_h_4b8939.pth not found" in text, text
    assert "fiftyone-ssa models download sam-vit-h" in text
    assert message.locator("strong, em, a, code").count() == 0  # no Markdown markup


def test_run_ssa_from_the_app_and_filter_by_predicted_class(app, app_dataset):
    outputs = ["ssa", "ssa_masks", "ssa_branch"]
    page, shot = app(app_dataset)
    _sidebar_field(page, "coarse").wait_for()
    _sidebar_field(page, "instances").wait_for()
    for name in outputs:
        assert _sidebar_field(page, name).count() == 0
    shot("dataset")

    execute = _open_operator(page, "Semantic Segment")
    page.get_by_text("missing weights for 'sam-vit-h'").wait_for()
    assert execute.is_disabled()
    page.get_by_text("Existing Detections field with instance masks").click()
    page.get_by_text("Existing Segmentation field").click()
    page.get_by_text("missing weights for").first.wait_for(state="detached")
    shot("run_ssa_form")
    _expect(execute).to_be_enabled()  # once the form has re-resolved
    execute.click()

    page.get_by_text("SSA finished").wait_for(timeout=120_000)
    labelled = page.get_by_text("Samples labelled").locator("xpath=..")
    assert str(NUM_SAMPLES) in labelled.inner_text()
    assert page.get_by_text("Samples failed").locator("xpath=..").inner_text().endswith("0")
    assert page.get_by_text("First failures").count() == 0  # nothing failed: no empty list
    shot("ssa_finished")
    page.get_by_role("button", name="Close").click()

    for name in outputs:
        _sidebar_field(page, name).wait_for()
    assert _shown_count(page) == NUM_SAMPLES
    thumbnails = page.locator('[data-cy="fo-grid"] [data-cy="looker"]')
    assert thumbnails.count() == NUM_SAMPLES

    # A colour per class: the first scene shows background (never drawn: the grey image),
    # road, car and person; drawn in one colour, the map or masks would show two colours.
    labels = ["gt", "coarse", "instances", *outputs]
    _show_only(page, "ssa", labels)
    shot("ssa_map")
    assert len(_label_colors(thumbnails.first)) >= 4, _label_colors(thumbnails.first)
    _show_only(page, "ssa_masks", labels)
    shot("ssa_masks")
    assert len(_label_colors(thumbnails.first)) >= 4, _label_colors(thumbnails.first)

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
    shot("filtered_by_person")
    assert _shown_count(page) == len(WITH_PERSON) < NUM_SAMPLES
    assert thumbnails.count() == len(WITH_PERSON)


def test_evaluate_miou_form_chooses_the_ground_truth_and_runs(app, app_dataset):
    page, shot = app(app_dataset)
    execute = _open_operator(page, "Evaluate mIoU")
    # gt is preselected (named like a ground truth); the one thing left is the prediction
    page.get_by_text("Choose at least one prediction field").wait_for()
    shot("form")
    assert _alerts(page) == ["Choose at least one prediction field"]
    assert page.get_by_text("Required property").count() == 0  # no second (the App's own)
    ground_truth = page.get_by_role("combobox").filter(has_text=re.compile(r"^gt$"))
    assert ground_truth.count() == 1
    assert execute.is_disabled()

    predictions = page.get_by_placeholder("Type and press enter to add a value")
    predictions.click()
    page.get_by_role("option", name="coarse", exact=True).click()
    page.get_by_text("Choose at least one prediction field").wait_for(state="detached")
    page.get_by_text("one evaluation run per field").click()  # closes the list of choices
    shot("form_filled")
    assert _alerts(page) == []
    _expect(execute).to_be_enabled()  # once the form has re-resolved
    execute.click()

    page.get_by_role("cell", name="coarse").wait_for(timeout=60_000)
    shot("results")
    app_dataset.reload()
    results = app_dataset.load_evaluation_results("miou")
    assert app_dataset.get_evaluation_info("miou").config.gt_field == "gt"
    assert 0.3 < results.miou < 1
    cells = page.get_by_role("row").filter(has_text="coarse").get_by_role("cell")
    assert [cells.nth(i).inner_text() for i in range(2)] == ["coarse", "miou"]
    assert float(cells.nth(2).inner_text()) == pytest.approx(results.miou)


def test_model_evaluation_panel_lists_miou_and_per_class_iou(app, app_dataset):
    results = evaluate_miou(app_dataset, "coarse", "gt", eval_key="coarse_eval", progress=False)
    assert 0.3 < results.miou < 1
    page, shot = app(app_dataset)
    page.locator('[data-cy="new-panel-btn"]').click()
    page.get_by_text("Model Evaluation", exact=True).first.click()
    page.get_by_text("1 Model Evaluations").wait_for()
    page.get_by_text("coarse_eval", exact=True).last.locator("xpath=../..").click()
    page.get_by_text("Summary", exact=True).wait_for()
    summary = page.get_by_role("table").filter(has_text="Metric").first
    summary.get_by_role("row").filter(has_text="mIoU").wait_for()
    shot("summary")

    def shown(metric: str) -> float:
        row = summary.get_by_role("row").filter(
            has=page.get_by_role("cell", name=metric, exact=True)
        )
        return float(row.get_by_role("cell").nth(1).inner_text())

    assert shown("mIoU") == pytest.approx(results.miou, abs=0.01)
    assert shown("aAcc") == pytest.approx(results.aacc, abs=0.01)
    for name, iou in results.per_class_iou.items():
        if not np.isnan(iou):
            assert shown(f"IoU {name}") == pytest.approx(iou, abs=0.01)


def _mask_centre(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (row, column)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return int(y), int(x)


def _class_drawn_at(thumbnail, pixel: tuple[int, int], shape: tuple[int, int], dataset) -> int:
    """The class id of ``ssa`` whose colour (the dataset's scheme, at its opacity over the grey
    image) is nearest to what the thumbnail shows at image ``pixel``; 0 (never drawn): grey."""
    shown = np.asarray(Image.open(io.BytesIO(thumbnail.screenshot())).convert("RGB"))
    (y, x), (h, w) = pixel, shape
    rgb = shown[int((y + 0.5) * shown.shape[0] / h), int((x + 0.5) * shown.shape[1] / w)]
    scheme = dataset.app_config.color_scheme
    colors = next(f["maskTargetsColors"] for f in scheme.fields if f["path"] == "ssa")
    drawn = {0: np.full(3, GREY, float)}
    for entry in colors:
        color = np.array([int(entry["color"][i : i + 2], 16) for i in (1, 3, 5)], float)
        drawn[entry["intTarget"]] = scheme.opacity * color + (1 - scheme.opacity) * GREY
    return min(drawn, key=lambda c: np.linalg.norm(drawn[c] - rgb))


def _wait_for_class_drawn(page, thumbnail, pixel, shape, dataset, class_id: int) -> int:
    """Polls :func:`_class_drawn_at` until it is ``class_id`` (the thumbnail may still be
    drawing) or the UI timeout passes; returns the last class seen."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        seen = _class_drawn_at(thumbnail, pixel, shape, dataset)
        if seen == class_id or time.monotonic() > deadline:
            return seen
        page.wait_for_timeout(250)


def test_relabel_a_mask_of_the_review_queue_and_apply_the_review(app, app_dataset):
    apply_ssa(app_dataset, semantic_branch="field:coarse", mask_branch="field:instances")
    queue = review_queue(app_dataset, n=REVIEW_SIZE)
    patch = queue.first()  # the most doubtful mask: the queue's first patch
    det, sample = patch.ssa_masks, app_dataset[patch.sample_id]
    h, w = sample.ssa.mask.shape
    mask = detection_full_mask(det, w, h)
    class_ids = {name: i for i, name in app_dataset.mask_targets["ssa"].items()}
    old = det.label
    new = next(
        c
        for c in sorted(app_dataset.distinct("ssa_masks.detections.label"))
        if c not in (old, "background")
    )
    before = sample.ssa.mask.copy()
    assert (before[mask] == class_ids[old]).all()  # the regions never overlap here
    index = app_dataset.values("id").index(sample.id)
    centre = _mask_centre(mask)

    page, shot = app(app_dataset)
    labels = ["gt", "coarse", "instances", "ssa", "ssa_masks", "ssa_branch"]
    thumbnails = page.locator('[data-cy="fo-grid"] [data-cy="looker"]')
    _show_only(page, "ssa", labels)
    seen = _wait_for_class_drawn(
        page, thumbnails.nth(index), centre, (h, w), app_dataset, class_ids[old]
    )
    shot("ssa_before")
    assert seen == class_ids[old]

    # the review queue, from the saved views
    page.locator('[data-cy="saved-views-selection"]').click()
    page.get_by_text(queue.name, exact=True).click()
    page.locator('[data-cy="entry-counts"]').get_by_text(
        re.compile(rf"^\s*{len(queue)}\s+patches\s*$")
    ).wait_for()
    shot("review_queue")

    # the first patch in the modal, relabelled in its annotation mode
    thumbnails.first.click()
    page.locator('[data-cy="modal"]').wait_for()
    page.locator('[data-cy="annotate"]').click()
    # the field is annotated for the first time: the App asks to add it to the label schema
    page.get_by_text("Field not in label schema").wait_for()
    page.get_by_text('Add "ssa_masks" to schema').click()
    page.get_by_text(det.id, exact=True).wait_for()  # the mask's own form
    # the classes of the field, as radio buttons (a drop-down list for more classes)
    label = page.locator('[data-cy="root_label_container"]')
    _expect(label.get_by_role("radio", name=old, exact=True)).to_be_checked()
    shot("annotate")
    with page.expect_response(
        lambda r: r.request.method == "PATCH" and det.id in r.url
    ) as response:
        label.get_by_role("radio", name=new, exact=True).check()
    assert response.value.ok, response.value.text()
    _expect(page.locator('[data-cy="annotation-save-state"]')).to_have_attribute(
        "data-settled", "true"
    )
    _expect(label.get_by_role("radio", name=new, exact=True)).to_be_checked()
    shot("relabelled")
    sample.reload()
    relabelled = next(d for d in sample.ssa_masks.detections if d.id == det.id)
    assert relabelled.label == new
    np.testing.assert_array_equal(sample.ssa.mask, before)  # not applied yet
    page.locator('[data-cy="explore"]').click()  # annotation mode ends
    page.mouse.click(10, 450)  # outside the modal (left of it): it closes
    page.locator('[data-cy="modal"]').wait_for(state="hidden")

    # apply_review from the Operator Browser, on the queue (the current view)
    execute = _open_operator(page, "Apply review")
    shot("apply_review_form")
    _expect(execute).to_be_enabled()
    execute.click()
    page.get_by_text("Review applied").wait_for(timeout=60_000)
    relabelled_row = page.get_by_text("Masks relabelled").locator("xpath=..")
    assert relabelled_row.inner_text().strip().endswith("1"), relabelled_row.inner_text()
    shot("review_applied")
    page.get_by_role("button", name="Close").click()

    # the Segmentation: the mask's pixels have the new class, nothing else changed
    app_dataset.reload()  # the App's process added a field (ssa_before_review)
    sample = app_dataset[sample.id]
    after = sample.ssa.mask
    assert (after[mask] == class_ids[new]).all()
    np.testing.assert_array_equal(after[~mask], before[~mask])
    np.testing.assert_array_equal(sample.ssa_before_review.mask, before)
    marked = next(d for d in sample.ssa_masks.detections if d.id == det.id)
    assert (marked.reviewed, marked.label_before_review) == (True, old)

    # and in the App: back on the samples, the map shows the new class's colour there
    page.locator('[data-cy="saved-views-btn-selection-clear"]').click()
    _wait_for_count(page, NUM_SAMPLES)
    _show_only(page, "ssa", labels)
    seen = _wait_for_class_drawn(
        page, thumbnails.nth(index), centre, (h, w), app_dataset, class_ids[new]
    )
    shot("ssa_after")
    assert seen == class_ids[new]
