"""mmsegmentation's mIoU from a streaming confusion matrix, against independent computations."""

import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiftyone_ssa.core.metrics import (
    ClassMatcher,
    StreamingConfusionMatrix,
    pixel_confusion_matrix,
    reduce_zero_label,
    resize_nearest,
    segmentation_metrics,
)

IGNORE = 255


def random_pair(rng, shape, num_classes, ignore_fraction=0.2, used=None):
    """(pred, gt) int64 tensors; gt has ignore pixels; only ``used`` classes appear if given."""
    values = np.arange(num_classes) if used is None else np.asarray(used)
    gt = rng.choice(values, size=shape)
    pred = rng.choice(values, size=shape)
    # Predictions agree with the ground truth on about half of the pixels.
    agree = rng.random(shape) < 0.5
    pred[agree] = gt[agree]
    gt[rng.random(shape) < ignore_fraction] = IGNORE
    return torch.from_numpy(pred), torch.from_numpy(gt)


def naive_mmseg(pairs, num_classes, ignore_index=IGNORE):
    """mmsegmentation's intersect_and_union summed over images, with per-class loops in numpy."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    label = np.zeros(num_classes)
    for pred, gt in pairs:
        pred, gt = pred.numpy(), gt.numpy()
        valid = gt != ignore_index
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += np.sum(p & g)
            union[c] += np.sum(p | g)
            label[c] += np.sum(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / label
    miou = np.nan if np.all(np.isnan(iou)) else np.nanmean(iou)
    macc = np.nan if np.all(np.isnan(acc)) else np.nanmean(acc)
    aacc = inter.sum() / label.sum() if label.sum() else np.nan
    return iou, acc, miou, macc, aacc


def assert_close_nan(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape,num_classes", [((7, 9), 3), ((32, 24), 6), ((1, 50), 12)])
def test_confusion_matrix_matches_sklearn(shape, num_classes):
    rng = np.random.default_rng(num_classes)
    pred, gt = random_pair(rng, shape, num_classes)
    got = pixel_confusion_matrix(pred, gt, num_classes, ignore_index=IGNORE)
    valid = gt != IGNORE
    expected = skm.confusion_matrix(
        gt[valid].numpy(), pred[valid].numpy(), labels=list(range(num_classes))
    )
    assert got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), expected)


def test_metrics_match_naive_reference_with_absent_classes():
    rng = np.random.default_rng(1)
    num_classes = 8
    # Class 6 never appears anywhere; class 7 is only ever predicted, never in the ground truth.
    pairs = [random_pair(rng, (11, 13), num_classes, used=[0, 1, 2, 3, 4, 5]) for _ in range(5)]
    pred, gt = pairs[0]
    pred[0, :4] = 7
    stream = StreamingConfusionMatrix(num_classes, ignore_index=IGNORE)
    for p, g in pairs:
        stream.update(p, g)
    got = stream.compute()
    iou, acc, miou, macc, aacc = naive_mmseg(pairs, num_classes)
    assert np.isnan(iou[6]) and iou[7] == 0 and np.isnan(acc[7])
    assert_close_nan(got.iou, iou)
    assert_close_nan(got.accuracy, acc)
    assert got.miou == pytest.approx(miou, abs=1e-9)
    assert got.macc == pytest.approx(macc, abs=1e-9)
    assert got.aacc == pytest.approx(aacc, abs=1e-9)
    # mIoU is the ratio of sums, not the mean of per-image mIoUs.
    per_image = np.mean(
        [segmentation_metrics(pixel_confusion_matrix(p, g, 8)).miou for p, g in pairs]
    )
    assert abs(per_image - got.miou) > 1e-6


def test_streaming_equals_one_big_image_and_grows():
    rng = np.random.default_rng(2)
    pairs = [random_pair(rng, (9, 10), 4) for _ in range(4)]
    stream = StreamingConfusionMatrix(2)
    stream.grow(4)
    images = [stream.update(p, g) for p, g in pairs]
    whole = pixel_confusion_matrix(
        torch.cat([p.flatten() for p, _ in pairs]), torch.cat([g.flatten() for _, g in pairs]), 4
    )
    torch.testing.assert_close(stream.matrix, whole)
    torch.testing.assert_close(sum(images), whole)
    stream.grow(6)
    assert stream.matrix.shape == (6, 6) and torch.equal(stream.matrix[:4, :4], whole)
    assert int(stream.matrix[4:].sum() + stream.matrix[:, 4:].sum()) == 0
    with pytest.raises(ValueError, match="num_classes"):
        stream.grow(3)


def test_reduce_zero_label_matches_mmsegmentation():
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 6, size=(8, 8)).astype(np.uint8)
    raw[0, 0] = 255
    # mmsegmentation's LoadAnnotations(reduce_zero_label=True), verbatim.
    expected = raw.copy()
    expected[expected == 0] = 255
    expected = expected - 1
    expected[expected == 254] = 255
    got = reduce_zero_label(torch.from_numpy(raw))
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.int64))
    pred = torch.from_numpy(rng.integers(0, 5, size=(8, 8)))
    direct = pixel_confusion_matrix(pred, torch.from_numpy(raw), 5, reduce_zero_label=True)
    torch.testing.assert_close(direct, pixel_confusion_matrix(pred, got, 5))


def test_bad_arguments_raise_value_error():
    ids = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        pixel_confusion_matrix(ids, torch.zeros(4, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="integer"):
        pixel_confusion_matrix(ids.float(), ids, 2)
    with pytest.raises(ValueError, match=r"`pred` ids"):
        pixel_confusion_matrix(ids + 3, ids, 2)
    with pytest.raises(ValueError, match=r"`gt` ids"):
        pixel_confusion_matrix(ids, ids + 3, 2)
    # Out-of-range ground truth under ignore_index is fine.
    assert int(pixel_confusion_matrix(ids, ids + 255, 2).sum()) == 0
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(torch.zeros(2, 3, dtype=torch.long))


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    num_classes=st.integers(1, 6),
    ignore_fraction=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_property_random_masks(height, width, num_classes, ignore_fraction, seed):
    rng = np.random.default_rng(seed)
    pred, gt = random_pair(rng, (height, width), num_classes, ignore_fraction)
    got = segmentation_metrics(pixel_confusion_matrix(pred, gt, num_classes))
    iou, acc, miou, macc, aacc = naive_mmseg([(pred, gt)], num_classes)
    assert_close_nan(got.iou, iou)
    assert_close_nan([got.miou, got.macc, got.aacc], [miou, macc, aacc])
    if not np.isnan(got.miou):
        assert 0.0 <= got.miou <= 1.0 and 0.0 <= got.aacc <= 1.0
    # A perfect prediction scores exactly 1 wherever there is a valid pixel.
    valid = gt != IGNORE
    perfect = torch.where(valid, gt, pred)
    best = segmentation_metrics(pixel_confusion_matrix(perfect, gt, num_classes))
    if bool(valid.any()):
        assert best.miou == 1.0 and best.aacc == 1.0 and best.macc == 1.0
    else:
        assert np.isnan(best.miou) and np.isnan(best.aacc)


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), num_classes=st.integers(1, 5))
def test_property_all_ignored_ground_truth_is_nan(height, width, num_classes):
    pred = torch.randint(0, num_classes, (height, width))
    gt = torch.full((height, width), IGNORE)
    metrics = segmentation_metrics(pixel_confusion_matrix(pred, gt, num_classes))
    assert np.isnan(metrics.miou) and np.isnan(metrics.aacc) and np.isnan(metrics.macc)
    assert torch.isnan(metrics.iou).all()


def test_resize_nearest_matches_reference():
    rng = np.random.default_rng(4)
    for (src_h, src_w), (dst_h, dst_w) in [
        ((5, 7), (13, 4)),
        ((16, 9), (16, 9)),
        ((8, 6), (3, 17)),
    ]:
        mask = torch.from_numpy(rng.integers(0, 300, size=(src_h, src_w)))
        got = resize_nearest(mask, (dst_h, dst_w))
        expected = np.empty((dst_h, dst_w), dtype=np.int64)
        for i in range(dst_h):
            for j in range(dst_w):
                expected[i, j] = mask[i * src_h // dst_h, j * src_w // dst_w]
        np.testing.assert_array_equal(got.numpy(), expected)
    # Integer scale factors agree with torch's own nearest interpolation.
    mask = torch.from_numpy(rng.integers(0, 300, size=(6, 4)))
    for size in [(12, 8), (18, 12), (3, 2)]:
        reference = torch.nn.functional.interpolate(mask[None, None].float(), size=size)[0, 0]
        torch.testing.assert_close(resize_nearest(mask, size), reference.long())
    with pytest.raises(ValueError):
        resize_nearest(mask, (0, 3))


def test_class_matcher_matches_names_across_id_spaces():
    matcher = ClassMatcher(
        {0: "bg", 1: "cat", 2: "dog", 3: "bird"}, {0: "bg", 4: "dog", 7: "cat", 9: "fish"}
    )
    assert matcher.names == ["bg", "cat", "dog", "bird", "fish"]
    assert matcher.unmatched_gt == ["bird"] and matcher.unmatched_pred == ["fish"]
    gt = matcher.gt_classes(torch.tensor([0, 1, 2, 3, 5]))
    pred = matcher.pred_classes(torch.tensor([0, 7, 4, 9, 12, 5]))
    assert [matcher[k] for k in gt.tolist()] == ["bg", "cat", "dog", "bird", "5"]
    assert [matcher[k] for k in pred.tolist()] == ["bg", "cat", "dog", "fish", "12", "5"]
    assert matcher.unnamed_gt_values == [5] and matcher.unnamed_pred_values == [5, 12]
    assert [matcher[k] for k in matcher.final_order()] == [
        "bg",
        "cat",
        "dog",
        "bird",
        "fish",
        "5",
        "12",
    ]
    with pytest.raises(ValueError, match="ids"):
        matcher.gt_classes(torch.tensor([-1]))


def test_class_matcher_without_targets_matches_ids():
    matcher = ClassMatcher(None, None)
    pred = matcher.pred_classes(torch.tensor([10, 2]))
    gt = matcher.gt_classes(torch.tensor([2, 10, 3]))
    assert pred.tolist() == [1, 0] and gt.tolist() == [0, 1, 2]  # new values numbered in id order
    assert [matcher[k] for k in matcher.final_order()] == ["2", "3", "10"]
    assert matcher.unmatched_gt == [] and matcher.unnamed_gt_values == []


def test_core_metrics_import_no_fiftyone():
    code = (
        "import sys, fiftyone_ssa.core.metrics; "
        "bad = [m for m in ('fiftyone', 'transformers', 'segment_anything') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------- properties (issue 10)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=5),
    num_classes=st.integers(1, 5),
    ignore_fraction=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_streaming_over_images_equals_the_naive_sum(
    sizes, num_classes, ignore_fraction, seed
):
    """Images of random shapes, some all-ignore: per-image updates sum to mmsegmentation's
    collection-level metrics."""
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng, size, num_classes, ignore_fraction) for size in sizes]
    stream = StreamingConfusionMatrix(num_classes, ignore_index=IGNORE)
    for pred, gt in pairs:
        stream.update(pred, gt)
    got = stream.compute()
    iou, acc, miou, macc, aacc = naive_mmseg(pairs, num_classes)
    assert_close_nan(got.iou, iou)
    assert_close_nan(got.accuracy, acc)
    assert_close_nan([got.miou, got.macc, got.aacc], [miou, macc, aacc])
    assert int(stream.matrix.sum()) == sum(int((gt != IGNORE).sum()) for _, gt in pairs)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    num_classes=st.integers(2, 6),
    data=st.data(),
)
def test_property_full_image_and_empty_classes(height, width, num_classes, data):
    """A class covering the whole image in both maps scores IoU 1 and every other class is
    NaN (absent from both, so not counted); predicting it where the ground truth has another
    class scores 0 for both."""
    c = data.draw(st.integers(0, num_classes - 1))
    other = data.draw(st.integers(0, num_classes - 1).filter(lambda k: k != c))
    full = torch.full((height, width), c)
    metrics = segmentation_metrics(pixel_confusion_matrix(full, full, num_classes))
    assert metrics.iou[c] == 1.0 and metrics.miou == 1.0 and metrics.aacc == 1.0
    assert torch.isnan(torch.cat([metrics.iou[:c], metrics.iou[c + 1 :]])).all()
    wrong = segmentation_metrics(
        pixel_confusion_matrix(full, torch.full((height, width), other), num_classes)
    )
    assert wrong.iou[c] == 0.0 and wrong.iou[other] == 0.0 and wrong.miou == 0.0
    assert wrong.aacc == 0.0


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), num_classes=st.integers(1, 5))
def test_property_reduced_all_zero_ground_truth_is_all_ignored(height, width, num_classes):
    """ADE20K's raw 0 is 'other': with reduce_zero_label an all-zero ground truth has no valid
    pixel, so every metric is NaN and nothing is counted."""
    pred = torch.randint(0, num_classes, (height, width))
    gt = torch.zeros((height, width), dtype=torch.long)
    matrix = pixel_confusion_matrix(pred, gt, num_classes, reduce_zero_label=True)
    assert int(matrix.sum()) == 0
    metrics = segmentation_metrics(matrix)
    assert np.isnan(metrics.miou) and np.isnan(metrics.aacc)
