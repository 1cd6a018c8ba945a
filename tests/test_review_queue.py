"""Doubt attributes on the database and the review queue: library, CLI and operator.

A real dataset labelled by ``apply_ssa`` with field branches (a coarse Segmentation and the
true instance masks), then queues built from it and checked against the scores on the samples.
"""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionError

from fiftyone_ssa import apply_ssa, review_queue
from fiftyone_ssa.cli import main
from fiftyone_ssa.core.doubt import SSA_WEIGHTS
from tests.test_engine import engine_dataset  # noqa: F401 (a fixture)
from tests.test_plugin import execute, plugins_dir, uri  # noqa: F401 (a fixture)

BRANCHES = {"semantic_branch": "field:coarse", "mask_branch": "field:instances"}


@pytest.fixture
def labelled(scene_dataset):
    ds = scene_dataset(n=4, noise=0.15, factor=12)
    apply_ssa(ds, **BRANCHES)
    return ds


def all_masks(ds, field="ssa_masks"):
    """(review_score, sample id, detection id, label) of every mask, most doubtful first
    (stable: ties keep the dataset's order)."""
    rows = []
    for sample in ds:
        for det in sample[field].detections:
            rows.append((det.review_score, sample.id, det.id, det.label))
    return sorted(rows, key=lambda r: -r[0])


def test_every_mask_carries_its_doubt(labelled):
    schema = labelled.get_field_schema(flat=True)
    for name in ("vote_margin", "branch_disagreement", "review_score"):
        assert isinstance(schema[f"ssa_masks.detections.{name}"], fo.FloatField)
    w_margin, w_branch = SSA_WEIGHTS["vote_margin"], SSA_WEIGHTS["branch_disagreement"]
    scores = []
    for sample in labelled:
        for det in sample.ssa_masks.detections:
            assert 0.0 <= det.vote_margin <= det.confidence <= 1.0
            # The true instances do not overlap: each paints all its pixels, so the branch
            # disagrees on exactly the pixels that did not vote for its class.
            assert det.branch_disagreement == pytest.approx(1.0 - det.confidence, abs=1e-6)
            # No SAM scores from a field branch: the score is the vote's two doubts.
            expected = (w_margin * (1 - det.vote_margin) + w_branch * det.branch_disagreement) / (
                w_margin + w_branch
            )
            assert det.review_score == pytest.approx(expected, abs=1e-6)
            scores.append(det.review_score)
    assert len(set(scores)) > 3  # the queue below has something to order
    # filterable in the App
    doubtful = labelled.filter_labels("ssa_masks", fo.ViewField("review_score") > 0.2)
    assert 0 < doubtful.count("ssa_masks.detections") < labelled.count("ssa_masks.detections")


def test_queue_of_masks_is_the_most_doubtful_first_and_saved(labelled):
    expected = all_masks(labelled)[:5]
    view = review_queue(labelled, n=5)
    assert view.name == "review-ssa_masks"
    assert view._is_patches and len(view) == 5
    assert [p.ssa_masks.id for p in view] == [r[2] for r in expected]
    assert [p.ssa_masks.review_score for p in view] == [r[0] for r in expected]
    assert [p.sample_id for p in view] == [r[1] for r in expected]
    assert "review-ssa_masks" in labelled.list_saved_views()
    again = fo.load_dataset(labelled.name).load_saved_view("review-ssa_masks")
    assert [p.ssa_masks.id for p in again] == [r[2] for r in expected]
    # building it again replaces the queue (its own view) without asking
    assert len(review_queue(labelled, n=3)) == 3


def test_queue_limited_to_classes(labelled):
    rows = all_masks(labelled)
    classes = sorted({r[3] for r in rows})[:2]
    expected = [r for r in rows if r[3] in classes][:4]
    view = review_queue(labelled, n=4, classes=classes, name="two classes")
    assert [p.ssa_masks.id for p in view] == [r[2] for r in expected]
    assert {p.ssa_masks.label for p in view} <= set(classes)


def test_queue_of_samples_holds_the_samples_of_the_doubtful_masks(labelled):
    top = all_masks(labelled)[:6]
    view = review_queue(labelled, n=6, by="samples")
    assert view.name == "review-ssa_masks-samples" and not view._is_patches
    assert view.values("id") == list(dict.fromkeys(r[1] for r in top))
    first = view.first()
    assert len(first.ssa_masks.detections) == len(labelled[first.id].ssa_masks.detections)


def test_reviewed_masks_leave_the_queue(labelled):
    view = review_queue(labelled, n=3)
    first = view.first()
    sample = labelled[first.sample_id]
    for det in sample.ssa_masks.detections:
        if det.id == first.ssa_masks.id:
            det["reviewed"] = True
    sample.save()
    # the saved queue is a snapshot; building it again leaves the reviewed mask out
    assert [p.ssa_masks.id for p in labelled.load_saved_view(view.name)][0] == first.ssa_masks.id
    ids = [p.ssa_masks.id for p in review_queue(labelled, n=3)]
    assert first.ssa_masks.id not in ids and len(ids) == 3
    unreviewed = [r for r in all_masks(labelled) if r[2] != first.ssa_masks.id]
    assert ids == [r[2] for r in unreviewed[:3]]


def test_queue_of_a_view(labelled):
    view = labelled.skip(2)
    queue = review_queue(view, n=100)
    assert len(queue) == view.count("ssa_masks.detections")
    assert set(queue.values("sample_id")) == set(view.values("id"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "`n` to be an integer >= 1"),
        ({"n": 2.5}, "`n` to be an integer >= 1"),
        ({"by": "pixels"}, "`by` to be one of masks, samples"),
        ({"classes": "car"}, "list of class names"),
        ({"classes": []}, "at least one class"),
        ({"label_field": "instances"}, "have no review_score"),
        ({"label_field": "ssa"}, "holds Segmentation, expected Detections"),
        ({"label_field": "nope"}, "does not exist"),
        ({"name": ""}, "non-empty string"),
    ],
)
def test_wrong_use_is_one_clear_error(labelled, kwargs, match):
    with pytest.raises(ValueError, match=match):
        review_queue(labelled, **kwargs)
    assert labelled.list_saved_views() == []


def test_a_users_saved_view_is_not_replaced_without_overwrite(labelled):
    labelled.save_view("mine", labelled.limit(1))
    with pytest.raises(ValueError, match="not a review queue"):
        review_queue(labelled, n=2, name="mine")
    assert len(labelled.load_saved_view("mine")) == 1
    assert len(review_queue(labelled, n=2, name="mine", overwrite=True)) == 2


def test_cli_prints_the_name_and_count(labelled, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "queue", labelled.name, "-n", "4", "--by", "samples", "--name", "q"])
    assert exit_info.value.code == 0
    view = labelled.load_saved_view("q")
    out = capsys.readouterr().out
    assert f"saved view 'q' on dataset {labelled.name!r}: {len(view)} samples" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "queue", labelled.name, "--label-field", "instances"])
    assert exit_info.value.code == 1
    assert "have no review_score" in capsys.readouterr().err


def test_operator_builds_the_queue_and_shows_it(labelled, plugins_dir):  # noqa: F811
    expected = all_masks(labelled)
    classes = [expected[0][3]]
    result = execute(
        "build_review_queue",
        labelled,
        params={"label_field": "ssa_masks", "n": 3, "classes": classes, "by": "masks"},
    )
    assert result.error is None, result.error
    assert result.result == {"name": "review-ssa_masks", "count": result.result["count"]}
    view = labelled.load_saved_view("review-ssa_masks")
    ids = [r[2] for r in expected if r[3] in classes][:3]
    assert [p.ssa_masks.id for p in view] == ids and result.result["count"] == len(ids)
    requests = result.executor.to_json()["requests"]
    shown = [r for r in requests if r["operator_uri"].endswith("set_view")]
    assert shown and shown[0]["params"] == {"name": "review-ssa_masks"}


def test_operator_form_needs_a_scored_field(scene_dataset, plugins_dir):  # noqa: F811
    ds = scene_dataset(n=1)
    with pytest.raises(ExecutionError, match="No Detections field with review_score"):
        foo.execute_operator(
            uri("build_review_queue"), ctx={"dataset": ds, "view": ds.view()}, params={}
        )
    assert ds.list_saved_views() == []


def test_scores_are_numbers(labelled):
    assert not any(math.isnan(r[0]) for r in all_masks(labelled))


def test_engine_masks_carry_their_doubt_and_queue(engine_dataset, tiny_engine_models):  # noqa: F811
    from fiftyone_ssa.core.doubt import ENGINE_WEIGHTS
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    apply_ssa_engine(engine_dataset, mask_branch="field:gt", top_k=2, models=tiny_engine_models)
    schema = engine_dataset.get_field_schema(flat=True)
    for name in ("clip_probability", "clip_margin", "review_score"):
        assert isinstance(schema[f"ssa_engine.detections.{name}"], fo.FloatField)
    assert isinstance(schema["ssa_engine.detections.clip_agrees"], fo.BooleanField)
    w = ENGINE_WEIGHTS
    for sample in engine_dataset:
        for det in sample.ssa_engine.detections:
            assert det.clip_agrees == (det.label == det.class_proposals[0])
            assert 0.0 <= det.clip_probability <= 1.0
            assert -1.0 <= det.clip_margin <= det.clip_probability
            # CLIP's top-1 has the largest probability: a margin >= 0, any other one <= 0
            assert (det.clip_margin >= 0) if det.clip_agrees else (det.clip_margin <= 0)
            expected = (
                w["clip_margin"] * (1 - max(det.clip_margin, 0.0))
                + w["clipseg_share"] * (1 - det.confidence)
                + w["clip_agrees"] * (0.0 if det.clip_agrees else 1.0)
            ) / (w["clip_margin"] + w["clipseg_share"] + w["clip_agrees"])
            assert det.review_score == pytest.approx(expected, abs=1e-5)
    expected = all_masks(engine_dataset, "ssa_engine")[:4]
    view = review_queue(engine_dataset, label_field="ssa_engine", n=4)
    assert view.name == "review-ssa_engine"
    assert [p.ssa_engine.id for p in view] == [r[2] for r in expected]
