"""SSA end to end with field branches (no model run), and the oracle experiment."""

import fiftyone as fo
import numpy as np
import pytest

from fiftyone_ssa import apply_ssa
from tests.scenes import SCENE_CLASSES, miou


def _dataset_miou(ds, field):
    preds = [s[field].mask for s in ds]
    gts = [s.ground_truth.mask for s in ds]
    return miou(
        np.concatenate([p.ravel() for p in preds]),
        np.concatenate([g.ravel() for g in gts]),
        len(SCENE_CLASSES),
    )


def test_oracle_ssa_beats_coarse_branch(scene_dataset):
    ds = scene_dataset(n=5, noise=0.05, factor=8)
    summary = apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    assert summary.num_labelled == 5 and not summary.failures
    branch, ssa = _dataset_miou(ds, "ssa_branch"), _dataset_miou(ds, "ssa")
    assert ssa > branch + 0.05, (branch, ssa)
    assert _dataset_miou(ds, "coarse") == pytest.approx(branch)


def test_oracle_perfect_branch_loses_at_most_a_sliver(scene_dataset):
    ds = scene_dataset(n=3, perfect=True, seed=1)
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    assert _dataset_miou(ds, "ssa") >= 0.99


def test_a_callable_branch_names_its_classes_in_the_mask_targets(scene_dataset):
    ds = scene_dataset(n=2)

    def bright_trees(image):  # learns its classes while it runs, as a user's model does
        return np.where(image.mean(axis=-1) > 100, 3, 1), {1: "road", 3: "tree"}

    apply_ssa(ds, semantic_branch=bright_trees, mask_branch="field:instances", device="cpu")
    assert ds.count("ssa") == 2
    for field in ("ssa", "ssa_branch"):
        painted = {int(c) for s in ds for c in np.unique(s[field].mask)}
        assert painted and painted <= {1, 3}
        assert ds.mask_targets[field] == {c: {1: "road", 3: "tree"}[c] for c in painted}


def test_sam_settings_with_a_field_mask_branch_are_ignored_not_a_new_run(scene_dataset, caplog):
    ds = scene_dataset(n=2)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    apply_ssa(ds, **branches)
    keys = ds.values("ssa.run_key")
    with caplog.at_level("WARNING", logger="fiftyone_ssa.labelling.ssa"):
        summary = apply_ssa(ds, **branches, points_per_side=8)  # was refused: "already exists"
    assert "ignoring mask generator settings ['points_per_side']" in caplog.text
    assert summary.num_labelled == 0 and ds.values("ssa.run_key") == keys


def test_output_schema(scene_dataset):
    ds = scene_dataset(n=2)
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances", top_k=2)
    assert ds.mask_targets["ssa"] == SCENE_CLASSES
    assert ds.mask_targets["ssa_branch"] == SCENE_CLASSES
    sample = ds.first()
    assert isinstance(sample.ssa, fo.Segmentation) and sample.ssa.mask.dtype == np.uint8
    assert sample.ssa.mask.shape == sample.ground_truth.mask.shape
    dets = sample.ssa_masks.detections
    assert len(dets) == len(sample.instances.detections)
    for det in dets:
        assert det.label in SCENE_CLASSES.values()
        assert 0 < det.confidence <= 1
        assert 1 <= len(det.class_proposals) <= 2
        assert det.class_proposals[0] == det.label
        assert det.area == int(det.mask.sum())
        assert det.predicted_iou is None
    # the declared attributes let the App filter on them
    schema = ds.get_field_schema(flat=True)
    assert "ssa_masks.detections.class_proposals" in schema
    assert "ssa_masks.detections.area" in schema
    # filtering by predicted class narrows the view
    label = dets[0].label
    view = ds.filter_labels("ssa_masks", fo.ViewField("label") == label)
    assert 0 < view.count("ssa_masks.detections") < ds.count("ssa_masks.detections")


def test_refuses_existing_field_unless_overwrite_and_skip_existing(scene_dataset):
    ds = scene_dataset(n=3)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    apply_ssa(ds[:1], **branches)
    # Another configuration may not touch the first run's labels...
    with pytest.raises(ValueError, match="already exists"):
        apply_ssa(ds, top_k=2, **branches)
    # ...but skipping labelled samples is fine
    summary = apply_ssa(ds, top_k=2, skip_existing=True, **branches)
    assert summary.skipped_existing == 1 and summary.num_labelled == 2
    assert ds.count("ssa") == 3
    assert ds.count("ssa_branch") == 3
    summary = apply_ssa(ds, overwrite=True, write_branch=False, **branches)
    assert summary.num_labelled == 3 and summary.skipped_existing == 0
    assert ds.count("ssa_branch") == 0  # no branch map of other settings stays beside
    # The same call again: everything is done already (same run key)
    again = apply_ssa(ds, overwrite=True, write_branch=False, **branches)
    assert again.num_labelled == 0 and again.skipped_existing == 3
    assert again.run_key == summary.run_key
    forced = apply_ssa(ds, overwrite=True, write_branch=False, resume=False, **branches)
    assert forced.num_labelled == 3


def test_same_call_resumes_without_overwrite(scene_dataset):
    ds = scene_dataset(n=4)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    first = apply_ssa(ds[:2], **branches)
    rest = apply_ssa(ds, **branches)
    assert rest.run_key == first.run_key
    assert rest.num_labelled == 2 and rest.skipped_existing == 2
    assert len(ds.match(fo.ViewField("ssa.run_key") == first.run_key)) == 4
    assert ds.info["fiftyone_ssa_runs"]["ssa"]["run_key"] == first.run_key


def test_a_branch_field_of_the_users_own_is_left_alone(scene_dataset):
    ds = scene_dataset(n=2)
    mine = [fo.Segmentation(mask=np.full((4, 4), 7, np.uint8)) for _ in range(2)]
    ds.set_values("ssa_branch", mine)
    apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances", write_branch=False)
    # No sample held an ssa label: the field is not a run's, and none of it is cleared
    assert ds.count("ssa") == 2 and ds.count("ssa_branch") == 2


def test_skip_existing_leaves_a_users_own_masks_field_alone(scene_dataset):
    # "gt_masks" is the user's, not a run's: no sample has a "gt" label beside it. Following
    # the refusal's advice (skip_existing) replaced it on every sample.
    ds = scene_dataset(n=2)
    ds.clone_sample_field("instances", "gt_masks")
    before = ds.values("gt_masks.detections.label")
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    with pytest.raises(ValueError, match="'gt_masks' already exists; pass overwrite=True"):
        apply_ssa(ds, label_field="gt", **branches)
    with pytest.raises(ValueError, match="'gt_masks' holds labels on samples without a 'gt'"):
        apply_ssa(ds, label_field="gt", skip_existing=True, **branches)
    assert ds.values("gt_masks.detections.label") == before and not ds.has_field("gt")
    # a run's own masks sit beside its labels: skipping those samples is fine
    apply_ssa(ds[:1], **branches)
    assert apply_ssa(ds, skip_existing=True, top_k=2, **branches).num_labelled == 1


def test_overwrite_with_skip_existing_is_refused(scene_dataset):
    ds = scene_dataset(n=2)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    apply_ssa(ds[:1], **branches)
    with pytest.raises(ValueError, match="not both"):
        apply_ssa(ds, overwrite=True, skip_existing=True, top_k=2, **branches)
    assert ds.count("ssa") == 1


def test_run_labelling_nothing_leaves_the_recorded_config(scene_dataset):
    ds = scene_dataset(n=2)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    first = apply_ssa(ds, **branches)
    nothing = apply_ssa(ds, top_k=2, skip_existing=True, **branches)
    assert nothing.num_labelled == 0 and nothing.run_key != first.run_key
    # Every label is still the first run's: the field's recorded config stays the first one
    assert ds.info["fiftyone_ssa_runs"]["ssa"]["run_key"] == first.run_key
    assert ds.info["fiftyone_ssa_runs"]["ssa"]["config"]["top_k"] == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"semantic_branch": "field:nope"}, "does not exist"),
        ({"semantic_branch": "field:instances"}, "expected Segmentation"),
        ({"mask_branch": "field:coarse"}, "expected Detections"),
        ({"semantic_branch": "no-such-branch"}, "unknown semantic branch"),
        ({"label_field": "coarse"}, "also an input"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "`batch_size` to be an integer"),
        ({"top_k": 2.0}, "`top_k` to be an integer"),
        ({"num_workers": 1.5}, "`num_workers` to be an integer"),
    ],
)
def test_wrong_use_is_one_clear_error_before_any_work(scene_dataset, kwargs, match):
    ds = scene_dataset(n=1)
    args = {"semantic_branch": "field:coarse", "mask_branch": "field:instances", **kwargs}
    with pytest.raises(ValueError, match=match):
        apply_ssa(ds, **args)
    assert "ssa" not in ds.get_field_schema()


def test_empty_view_is_refused(scene_dataset):
    ds = scene_dataset(n=1)
    with pytest.raises(ValueError, match="empty"):
        apply_ssa(ds.limit(0), semantic_branch="field:coarse", mask_branch="field:instances")


def test_size_mismatch_is_a_recorded_skip(scene_dataset):
    ds = scene_dataset(n=2)
    bad = ds.first()
    bad.coarse = fo.Segmentation(mask=np.zeros((10, 10), dtype=np.uint8))
    bad.save()
    summary = apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    assert summary.num_labelled == 1 and len(summary.failures) == 1
    assert ds.count("ssa_error") == 1
    assert ds.first().ssa is None
    with pytest.raises(ValueError):
        apply_ssa(
            ds,
            label_field="ssa2",
            semantic_branch="field:coarse",
            mask_branch="field:instances",
            skip_failures=False,
        )


def test_class_ids_beyond_uint16_are_a_recorded_skip(scene_dataset):
    # e.g. a panoptic id map (category * 1000 + instance) given as the semantic branch: the
    # run stopped with a traceback at the write, after its fields and settings were changed
    ds = scene_dataset(n=2)
    bad = ds.first()
    panoptic = bad.coarse.mask.astype(np.int32) * 1000 + 70000
    bad.coarse = fo.Segmentation(mask=panoptic)
    bad.save()
    summary = apply_ssa(ds, semantic_branch="field:coarse", mask_branch="field:instances")
    assert summary.num_labelled == 1 and len(summary.failures) == 1
    assert "class id 7" in summary.failures[0].error and "65535" in summary.failures[0].error
    assert ds.first().ssa is None and ds.count("ssa") == 1


def test_views_hiding_the_label_field_still_skip_and_resume(scene_dataset):
    ds = scene_dataset(n=3)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    first = apply_ssa(ds, **branches)
    keys = ds.values("ssa.run_key")
    # the view hides `ssa`: labelled samples must still count as labelled
    view = ds.select_fields(["coarse", "instances"])
    summary = apply_ssa(view, top_k=2, skip_existing=True, **branches)
    assert summary.num_labelled == 0 and summary.skipped_existing == 3
    summary = apply_ssa(ds.exclude_fields("ssa"), **branches)  # resume of the first run
    assert summary.num_labelled == 0 and summary.skipped_existing == 3
    assert ds.values("ssa.run_key") == keys == [first.run_key] * 3


def test_a_view_hiding_an_input_field_says_so(scene_dataset):
    ds = scene_dataset(n=1)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    for view in (ds.exclude_fields("coarse"), ds.select_fields("instances")):
        with pytest.raises(ValueError, match="'coarse' exists on the dataset but this view excl"):
            apply_ssa(view, **branches)
    with pytest.raises(ValueError, match="'nope' does not exist on the dataset"):
        apply_ssa(ds, semantic_branch="field:nope", mask_branch="field:instances")
    assert not ds.has_field("ssa")


def test_runs_with_other_class_ids_cannot_mix_in_one_field(scene_dataset):
    ds = scene_dataset(n=3)
    ds.clone_sample_field("coarse", "coarse2")
    renamed = {i: f"other_{name}" for i, name in SCENE_CLASSES.items()}
    ds.mask_targets = {**ds.mask_targets, "coarse2": renamed}
    ds.save()
    apply_ssa(ds[:1], semantic_branch="field:coarse", mask_branch="field:instances")
    other = {"semantic_branch": "field:coarse2", "mask_branch": "field:instances"}

    # the first sample keeps its labels: the field's class names must stay theirs
    with pytest.raises(ValueError, match="read class id 0 as"):
        apply_ssa(ds, skip_existing=True, **other)
    with pytest.raises(ValueError, match="relabel every sample with overwrite=True"):
        apply_ssa(ds[1:], overwrite=True, **other)
    assert ds.count("ssa") == 1 and ds.mask_targets["ssa"] == SCENE_CLASSES

    # same names: the runs share the field; relabelling everything replaces the names
    summary = apply_ssa(
        ds,
        skip_existing=True,
        top_k=2,
        semantic_branch="field:coarse",
        mask_branch="field:instances",
    )
    assert summary.num_labelled == 2 and ds.mask_targets["ssa"] == SCENE_CLASSES
    summary = apply_ssa(ds, overwrite=True, **other)
    assert summary.num_labelled == 3 and ds.mask_targets["ssa"] == renamed


def test_refuses_collections_it_cannot_label(scene_dataset, make_dataset, tmp_path):
    ds = scene_dataset(n=2)
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    with pytest.raises(ValueError, match="`classes` to be a list of class names"):
        apply_ssa(ds, classes="cat", **branches)
    with pytest.raises(ValueError, match="patches, frames or clips view"):
        apply_ssa(ds.to_patches("instances"), **branches)

    video = make_dataset()
    video.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
    with pytest.raises(ValueError, match="media type 'video'"):
        apply_ssa(video, **branches)

    grouped = make_dataset()
    grouped.add_group_field("group", default="left")
    group = fo.Group()
    for name in ("left", "right"):
        grouped.add_sample(fo.Sample(filepath=ds.first().filepath, group=group.element(name)))
    with pytest.raises(ValueError, match="media type 'group'.*select_group_slices"):
        apply_ssa(grouped, **branches)
    assert "ssa" not in grouped.get_field_schema() and "ssa" not in video.get_field_schema()


def test_a_group_slice_other_than_the_default_resumes_skips_and_refuses(grouped_scene_dataset):
    # A grouped dataset's own queries see only its default slice: labels in "right" looked
    # absent, so a rerun labelled them again and another configuration replaced them unasked.
    grouped = grouped_scene_dataset()
    branches = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}
    right = grouped.select_group_slices("right")
    assert apply_ssa(right, **branches).num_labelled == 2
    again = apply_ssa(right, **branches)
    assert again.num_labelled == 0 and again.skipped_existing == 2
    with pytest.raises(ValueError, match="'ssa' already exists"):
        apply_ssa(right, top_k=1, **branches)
    assert apply_ssa(right, top_k=1, skip_existing=True, **branches).num_labelled == 0
    keys = right.values("ssa.run_key")
    assert len(set(keys)) == 1 and keys[0] == again.run_key
