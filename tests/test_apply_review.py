"""Reviews of SSA's masks folded back into its labels (``apply_review``), on the real database.

Corrections go through the App server's own sample routes (JSON patches, see
``tests/app_patch.py``); the repainted Segmentation is compared with an independent
repainting (a plain loop over the masks, largest first).
"""

from __future__ import annotations

from collections import Counter

import fiftyone as fo
import numpy as np
import pytest

from fiftyone_ssa import apply_ssa
from fiftyone_ssa.labelling.apply_review import apply_review
from fiftyone_ssa.labels import detection_full_mask
from tests.app_patch import AppClient, add, delete, relabel
from tests.scenes import SCENE_CLASSES

BRANCHES = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
NAME_TO_ID = {name: i for i, name in SCENE_CLASSES.items()}


@pytest.fixture
def app():
    return AppClient()


@pytest.fixture
def labelled(scene_dataset):
    """Three scenes labelled by SSA from field branches (coarse map, true instances)."""
    ds = scene_dataset(n=3, noise=0.05, factor=8)
    apply_ssa(ds, **BRANCHES)
    return ds


def raw(ds, sample_id):
    """The sample's document as stored (BSON values: masks are the stored bytes)."""
    from bson import ObjectId

    return ds._sample_collection.find_one({"_id": ObjectId(sample_id)})


def raw_detections(ds, sample_id, field="ssa_masks"):
    return {str(d["_id"]): d for d in raw(ds, sample_id)[field]["detections"]}


def reference_repaint(base: np.ndarray, detections, name_to_id: dict) -> np.ndarray:
    """SSA's painting rule, written plainly: masks largest first (ties in list order), each
    painted over the map, smaller ones last."""
    h, w = base.shape
    masks = [
        (detection_full_mask(d, w, h), name_to_id[d.label])
        for d in detections
        if d.mask is not None
    ]
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i][0].sum()))
    out = base.copy()
    for i in order:
        out[masks[i][0]] = masks[i][1]
    return out


def other_label(label: str) -> str:
    return next(n for n in SCENE_CLASSES.values() if n not in (label, "background"))


def test_ssa_records_the_label_of_every_mask_it_writes(labelled):
    for sample in labelled:
        dets = sample.ssa_masks.detections
        assert sample.ssa_masks.run_labels == {d.id: d.label for d in dets}
        # and the rule above, on the masks as written, gives SSA's own map
        expected = reference_repaint(sample.ssa_branch.mask, dets, NAME_TO_ID)
        np.testing.assert_array_equal(sample.ssa.mask, expected)


def test_nothing_changed_nothing_written(labelled):
    before = {s.id: raw(labelled, s.id) for s in labelled}
    summary = apply_review(labelled)
    assert summary.samples_unchanged == 3 and summary.samples_reviewed == 0
    assert {s.id: raw(labelled, s.id) for s in labelled} == before


def test_relabel_delete_add_through_the_app(labelled, app):
    sample, *others = list(labelled)
    untouched = {s.id: raw(labelled, s.id) for s in others}
    dets = sample.ssa_masks.detections
    old_label = dets[0].label
    new_label = other_label(old_label)
    deleted_id, deleted_label = dets[1].id, dets[1].label
    h, w = sample.ssa.mask.shape
    box = np.zeros((h, w), dtype=bool)
    box[h // 4 : h // 2, w // 4 : w // 2] = True  # overlaps several masks
    added = fo.Detection(
        label="sign",
        bounding_box=[(w // 4) / w, (h // 4) / h, (w // 2 - w // 4) / w, (h // 2 - h // 4) / h],
        mask=box[h // 4 : h // 2, w // 4 : w // 2],
    )
    app.patch_sample(
        sample,
        [
            relabel("ssa_masks", 0, new_label),
            delete("ssa_masks", 1),
            add("ssa_masks", added),
        ],
    )
    run_map = sample.ssa.mask.copy()
    edited = raw_detections(labelled, sample.id)  # as the App left them

    summary = apply_review(labelled)

    assert (summary.samples_reviewed, summary.samples_updated) == (1, 1)
    assert (summary.relabelled, summary.deleted, summary.added) == (1, 1, 1)
    sample.reload()
    dets = sample.ssa_masks.detections
    # the map: the run's rule over the corrected masks, on the branch map
    expected = reference_repaint(sample.ssa_branch.mask, dets, NAME_TO_ID)
    np.testing.assert_array_equal(sample.ssa.mask, expected)
    assert not np.array_equal(sample.ssa.mask, run_map)
    assert (sample.ssa.mask[box] == NAME_TO_ID["sign"]).any()
    np.testing.assert_array_equal(sample.ssa_before_review.mask, run_map)
    assert sample.ssa.run_key == others[0].ssa.run_key  # still the run's label
    # the marks
    assert (dets[0].reviewed, dets[0].label_before_review) == (True, old_label)
    assert dets[-1].reviewed is True and dets[-1].label_before_review is None
    assert deleted_id not in {d.id for d in dets}
    assert sample.ssa_masks.run_labels[deleted_id] == deleted_label  # the record stays
    assert sample.ssa_masks.reviewed_at is not None
    # every mask nobody changed: its stored document, byte for byte
    after = raw_detections(labelled, sample.id)
    changed = {dets[0].id, dets[-1].id}
    for det_id, doc in edited.items():
        if det_id not in changed:
            assert after[det_id] == doc
            assert "reviewed" not in doc
    # other samples: untouched
    assert {s.id: raw(labelled, s.id) for s in others} == untouched

    # applying again changes nothing
    again = raw(labelled, sample.id)
    summary = apply_review(labelled)
    assert (summary.samples_reviewed, summary.samples_updated) == (1, 0)
    assert raw(labelled, sample.id) == again


def test_a_deleted_masks_pixels_get_the_branch_class(labelled, app):
    sample = labelled.first()
    dets = sample.ssa_masks.detections
    h, w = sample.ssa.mask.shape
    # the mask covering the most pixels that no other mask covers
    full = [detection_full_mask(d, w, h) for d in dets]
    alone = [
        m & ~np.any([f for j, f in enumerate(full) if j != i], axis=0) for i, m in enumerate(full)
    ]
    branch, run_map = sample.ssa_branch.mask, sample.ssa.mask
    k = int(np.argmax([(run_map[a] != branch[a]).sum() for a in alone]))
    assert (run_map[alone[k]] != branch[alone[k]]).any()  # the deletion shows
    app.patch_sample(sample, [delete("ssa_masks", k)])
    apply_review(labelled)
    sample.reload()
    np.testing.assert_array_equal(sample.ssa.mask[alone[k]], sample.ssa_branch.mask[alone[k]])


def test_an_edit_in_a_patches_view_and_a_new_class(labelled, app):
    sample = labelled.first()
    det = sample.ssa_masks.detections[2]
    app.patch_label(
        sample,
        "ssa_masks.detections",
        det.id,
        [{"op": "replace", "path": "/label", "value": "unicorn"}],
    )
    # applied from a patches view (as the review queue is) showing that mask
    queue = labelled.to_patches("ssa_masks").match(fo.ViewField("ssa_masks.label") == "unicorn")
    summary = apply_review(queue)
    assert summary.relabelled == 1 and not summary.failures
    assert summary.samples_unchanged == 0  # the other samples are not in the queue
    sample.reload()
    unicorn = {v: k for k, v in labelled.mask_targets["ssa"].items()}["unicorn"]
    assert unicorn == max(SCENE_CLASSES) + 1
    assert labelled.mask_targets["ssa_before_review"] == labelled.mask_targets["ssa"]
    expected = reference_repaint(
        sample.ssa_branch.mask, sample.ssa_masks.detections, {**NAME_TO_ID, "unicorn": unicorn}
    )
    np.testing.assert_array_equal(sample.ssa.mask, expected)
    assert sample.ssa_masks.detections[2].label_before_review == det.label


def test_without_a_branch_map_relabels_apply_and_deletions_are_refused(scene_dataset, app):
    ds = scene_dataset(n=2)
    apply_ssa(ds, **BRANCHES, write_branch=False)
    first, second = list(ds)
    app.patch_sample(
        first, [relabel("ssa_masks", 0, other_label(first.ssa_masks.detections[0].label))]
    )
    app.patch_sample(second, [delete("ssa_masks", 0)])
    run_map = second.ssa.mask.copy()
    summary = apply_review(ds)
    assert summary.samples_updated == 1
    assert [p for p, _ in summary.failures] == [second.filepath]
    assert "no branch map" in summary.failures[0][1]
    first.reload(), second.reload()
    np.testing.assert_array_equal(second.ssa.mask, run_map)
    # the relabelled mask painted over the map as the run painted it
    d = first.ssa_masks.detections[0]
    h, w = first.ssa.mask.shape
    full = detection_full_mask(d, w, h)
    assert not np.array_equal(first.ssa.mask, first.ssa_before_review.mask)
    assert (first.ssa.mask[full] == NAME_TO_ID[d.label]).any()


def test_wrong_use(labelled):
    import fiftyone_ssa

    assert fiftyone_ssa.apply_review is apply_review  # the package's public name
    with pytest.raises(ValueError, match="does not exist"):
        apply_review(labelled, "nope")
    with pytest.raises(ValueError, match="holds Segmentation, expected Detections"):
        apply_review(labelled, "ssa")


def _review_first(ds, app) -> tuple:
    """Relabels the first sample's first mask in the App and applies it; returns the sample
    and its reviewed document."""
    sample = ds.first()
    label = sample.ssa_masks.detections[0].label
    app.patch_sample(sample, [relabel("ssa_masks", 0, other_label(label))])
    apply_review(ds)
    return sample, raw(ds, sample.id)


def _labels_of(ds, sample_id):
    doc = raw(ds, sample_id)
    return {k: doc.get(k) for k in ("ssa", "ssa_masks", "ssa_branch", "ssa_before_review")}


def test_a_rerun_keeps_reviewed_samples(labelled, app):
    sample, reviewed = _review_first(labelled, app)
    others = [s.id for s in labelled if s.id != sample.id]
    # the same run: nothing to do
    summary = apply_ssa(labelled, **BRANCHES)
    assert summary.num_labelled == 0
    # the same run, labelling everything again: the reviewed sample is kept
    others_before = {i: raw(labelled, i)["ssa_masks"]["run_labels"] for i in others}
    summary = apply_ssa(labelled, **BRANCHES, resume=False)
    assert (summary.num_labelled, summary.kept_reviewed) == (2, 1)
    assert "1 kept (reviewed)" in str(summary)
    assert _labels_of(labelled, sample.id) == {
        k: reviewed.get(k) for k in _labels_of(labelled, sample.id)
    }
    for i in others:  # relabelled: new detections, new ids
        assert raw(labelled, i)["ssa_masks"]["run_labels"] != others_before[i]
    # another run key with overwrite: still kept
    summary = apply_ssa(labelled, **BRANCHES, top_k=2, overwrite=True)
    assert (summary.num_labelled, summary.kept_reviewed) == (2, 1)
    assert raw(labelled, sample.id)["ssa_masks"] == reviewed["ssa_masks"]


def test_discard_reviews_relabels_them(labelled, app):
    sample, reviewed = _review_first(labelled, app)
    summary = apply_ssa(labelled, **BRANCHES, resume=False, discard_reviews=True)
    assert (summary.num_labelled, summary.kept_reviewed) == (3, 0)
    sample.reload()
    assert sample.ssa_before_review is None  # the copy of the reviewed map went with it
    assert not sample.ssa_masks.has_field("reviewed_at")
    assert not any(d.has_field("reviewed") for d in sample.ssa_masks.detections)
    expected = reference_repaint(sample.ssa_branch.mask, sample.ssa_masks.detections, NAME_TO_ID)
    np.testing.assert_array_equal(sample.ssa.mask, expected)


def _gt_majority(sample, det) -> str:
    h, w = sample.ground_truth.mask.shape
    values = sample.ground_truth.mask[detection_full_mask(det, w, h)]
    return SCENE_CLASSES[int(np.bincount(values).argmax())]


def test_review_report_on_a_constructed_review(scene_dataset, app, capsys):
    from fiftyone_ssa.cli import main
    from fiftyone_ssa.evaluation.review_report import ADDED, DELETED, review_report
    from tests.scenes import miou

    ds = scene_dataset(n=3, noise=0.05, factor=8, seed=3)
    for sample in ds:  # a branch that takes every car for a tree: SSA's cars are trees
        wrong_map = np.where(sample.coarse.mask == 2, 3, sample.coarse.mask)
        sample["wrong"] = fo.Segmentation(mask=wrong_map)
        sample.save()
    ds.mask_targets["wrong"] = SCENE_CLASSES
    ds.save()
    apply_ssa(ds, semantic_branch="field:wrong", mask_branch="field:instances")
    cars = [
        [i for i, d in enumerate(s.ssa_masks.detections) if _gt_majority(s, d) == "car"] for s in ds
    ]
    k = next(k for k, found in enumerate(cars) if found)
    samples = list(ds)
    first, second = samples[k], samples[(k + 1) % 3]
    run_classes = Counter(label for s in ds for label in s.ssa_masks.run_labels.values())
    # first: a car labelled tree relabelled car, the smallest mask of another class deleted
    # (the branch is mostly right there), a second car mask added over the car (applied)
    dets = first.ssa_masks.detections
    wrong, right = cars[k][0], "car"
    assert dets[wrong].label == "tree"
    gone = min(
        (i for i, d in enumerate(dets) if i != wrong and _gt_majority(first, d) != "car"),
        key=lambda i: dets[i].area,
    )
    relabelled_from, deleted_class = dets[wrong].label, dets[gone].label
    added = fo.Detection(
        label="car", bounding_box=dets[wrong].bounding_box, mask=dets[wrong].mask.copy()
    )
    app.patch_sample(
        first,
        [relabel("ssa_masks", wrong, right), delete("ssa_masks", gone), add("ssa_masks", added)],
    )
    apply_review(ds.select(first.id))
    # second: relabelled in the App, not applied yet
    pending_from = second.ssa_masks.detections[0].label
    app.patch_sample(second, [relabel("ssa_masks", 0, "tree" if pending_from != "tree" else "car")])

    report = review_report(ds, gt_field="ground_truth")

    assert (report.samples_labelled, report.samples_reviewed, report.samples_pending) == (3, 1, 1)
    assert {c: r.masks for c, r in report.classes.items() if r.masks} == dict(run_classes)
    expected = Counter(
        {(relabelled_from, right): 1, (deleted_class, DELETED): 1, (ADDED, "car"): 1}
    )
    expected[(pending_from, "tree" if pending_from != "tree" else "car")] += 1
    assert report.corrections == expected
    relabelled = Counter({relabelled_from: 1}) + Counter({pending_from: 1})
    assert {c: r.relabelled for c, r in report.classes.items() if r.relabelled} == dict(relabelled)
    assert {c: r.deleted for c, r in report.classes.items() if r.deleted} == {deleted_class: 1}
    assert {c: r.added for c, r in report.classes.items() if r.added} == {"car": 1}
    reviewed = relabelled + Counter({deleted_class: 1})
    assert {c: r.reviewed for c, r in report.classes.items() if r.reviewed} == dict(reviewed)
    # mIoU on the one reviewed sample, against an independent computation
    first.reload()
    n = len(SCENE_CLASSES)
    before = miou(first.ssa_before_review.mask.ravel(), first.ground_truth.mask.ravel(), n)
    after = miou(first.ssa.mask.ravel(), first.ground_truth.mask.ravel(), n)
    assert report.samples_evaluated == 1
    assert report.miou_before.miou == pytest.approx(before)
    assert report.miou_after.miou == pytest.approx(after)
    assert after > before  # the correction shows
    assert report.to_dict()["miou_after"] == pytest.approx(after)

    # the CLI prints the same report
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "report", ds.name, "--gt", "ground_truth"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "1 of 3 labelled samples reviewed" in text
    assert "1 sample(s) hold corrections not applied yet" in text
    assert f"{relabelled_from}" in text and DELETED in text
    assert f"{100 * before:.2f}" in text and f"{100 * after:.2f}" in text
    # and applies the pending one
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "apply", ds.name])
    assert exit_info.value.code == 0
    assert "2 reviewed samples" in capsys.readouterr().out
    assert review_report(ds).samples_pending == 0


def test_a_reshaped_mask_is_marked_and_repainted(labelled, app):
    import json

    from bson import json_util
    from fiftyone.server.utils import json as server_json

    sample = labelled.first()
    dets = sample.ssa_masks.detections
    k = int(np.argmax([d.area for d in dets]))
    reshaped = fo.Detection.from_dict(dets[k].to_dict())  # the same detection, same id
    mask = reshaped.mask.copy()
    mask[: mask.shape[0] // 2] = False  # its top half cut away
    reshaped.mask = mask
    value = json.loads(json_util.dumps(server_json.serialize(reshaped)))
    app.patch_sample(
        sample, [{"op": "replace", "path": f"/ssa_masks/detections/{k}", "value": value}]
    )
    assert sample.ssa_masks.detections[k].id == dets[k].id
    summary = apply_review(labelled)
    assert (summary.reshaped, summary.relabelled, summary.samples_unchanged) == (1, 0, 2)
    sample.reload()
    det = sample.ssa_masks.detections[k]
    assert (det.reviewed, det.label_before_review, det.label) == (
        True,
        dets[k].label,
        dets[k].label,
    )
    expected = reference_repaint(sample.ssa_branch.mask, sample.ssa_masks.detections, NAME_TO_ID)
    np.testing.assert_array_equal(sample.ssa.mask, expected)
    assert not np.array_equal(sample.ssa.mask, sample.ssa_before_review.mask)


def test_the_cli_keeps_reviews_unless_told_to_discard_them(labelled, app, capsys):
    from fiftyone_ssa.cli import main

    sample, reviewed = _review_first(labelled, app)
    command = ["run", labelled.name, "--semantic-branch", "field:coarse"]
    command += ["--mask-branch", "field:instances", "--no-resume"]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "2 samples labelled" in out and "1 kept (reviewed)" in out
    assert raw(labelled, sample.id)["ssa_masks"] == reviewed["ssa_masks"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--discard-reviews"])
    assert exit_info.value.code == 0
    assert "3 samples labelled" in capsys.readouterr().out
    assert "reviewed_at" not in raw(labelled, sample.id)["ssa_masks"]
