"""Voting and painting from COCO RLEs in run space, against the dense implementation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from fiftyone_ssa.core.rle import encode_counts, mask_to_rle
from fiftyone_ssa.core.rle_voting import (
    count_run_votes,
    paint_runs,
    rles_to_runs,
    vote_and_paint_rles,
    vote_rle_classes,
)
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes


def coco_rles(masks: np.ndarray) -> list[dict]:
    """pycocotools' compressed RLEs of (N, H, W) bool masks (bytes counts, as it writes them)."""
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def dense(masks: np.ndarray, class_map: np.ndarray, num_classes: int):
    m, c = torch.from_numpy(masks), torch.from_numpy(class_map)
    vote = vote_mask_classes(m, c, num_classes)
    return vote, paint_masks(c, m, vote.labels, painting_order(vote.areas))


def assert_same(masks, class_map, num_classes, rles=None):
    rles = coco_rles(masks) if rles is None else rles
    ref_vote, ref_painted = dense(masks, class_map, num_classes)
    vote, painted = vote_and_paint_rles(rles, torch.from_numpy(class_map), num_classes)
    torch.testing.assert_close(vote.votes, ref_vote.votes, rtol=0, atol=0)
    torch.testing.assert_close(vote.areas, ref_vote.areas, rtol=0, atol=0)
    torch.testing.assert_close(vote.labels, ref_vote.labels, rtol=0, atol=0)
    torch.testing.assert_close(vote.confidence, ref_vote.confidence, rtol=0, atol=0)
    assert painted.dtype == ref_painted.dtype
    np.testing.assert_array_equal(painted.numpy(), ref_painted.numpy())


def random_case(rng, n, h, w, c):
    """Blocky class map; ragged rectangles, some empty, some full-image, many overlapping."""
    block = int(rng.integers(1, 6))
    small = rng.integers(0, c, size=(h // block + 1, w // block + 1))
    class_map = np.kron(small, np.ones((block, block), dtype=np.int64))[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        kind = rng.random()
        if kind < 0.1:
            continue  # empty
        if kind < 0.2:
            masks[i] = True  # the whole image
            continue
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        masks[i, y0:y1, x0:x1] = True
        masks[i] &= rng.random((h, w)) > rng.random() * 0.5
    return masks, class_map


@pytest.mark.parametrize("seed", range(12))
def test_matches_dense_voting_and_painting(seed):
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(0, 30)), int(rng.integers(1, 50)), int(rng.integers(1, 50))
    c = int(rng.integers(1, 12))
    masks, class_map = random_case(rng, n, h, w, c)
    assert_same(masks, class_map, c)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 8),
    st.integers(1, 4),
    st.data(),
)
def test_hypothesis_matches_dense(h, w, n, c, data):
    pixels = st.lists(st.booleans(), min_size=h * w, max_size=h * w)
    masks = np.array(
        [np.array(data.draw(pixels), dtype=bool).reshape(h, w) for _ in range(n)], dtype=bool
    ).reshape(n, h, w)
    # Also the corner cases hypothesis may not reach alone: an empty and a full-image mask.
    if n >= 2:
        masks[0] = data.draw(st.sampled_from([np.zeros((h, w), bool), np.ones((h, w), bool)]))
    class_map = np.array(
        data.draw(st.lists(st.integers(0, c - 1), min_size=h * w, max_size=h * w)), dtype=np.int64
    ).reshape(h, w)
    assert_same(masks, class_map, c)


def test_ties_lowest_id_and_smaller_masks_on_top():
    class_map = np.array([[3, 3, 1, 1, 2]])
    masks = np.array(
        [[[1, 1, 1, 1, 0]], [[0, 0, 1, 1, 1]], [[1, 1, 0, 0, 0]], [[0, 0, 0, 0, 1]]], dtype=bool
    )
    vote, painted = vote_and_paint_rles(coco_rles(masks), torch.from_numpy(class_map), 4)
    # mask 0: two votes each for 1 and 3 -> 1; mask 1: 2 x class 1, 1 x class 2 -> 1
    assert vote.labels.tolist() == [1, 1, 3, 2]
    # order: mask 0 (4 px), mask 1 (3 px), mask 2 (2 px), mask 3 (1 px): smaller on top
    assert painted.tolist() == [[3, 3, 1, 1, 2]]
    assert vote.proposals(2)[1] == [1, 2]


def test_equal_areas_paint_in_input_order():
    class_map = np.array([[0, 0, 1, 1]])
    masks = np.array([[[1, 1, 1, 0]], [[0, 1, 1, 1]]], dtype=bool)  # 3 px each, overlapping
    vote, painted = vote_and_paint_rles(coco_rles(masks), torch.from_numpy(class_map), 2)
    assert vote.labels.tolist() == [0, 1]
    assert painted.tolist() == [[0, 1, 1, 1]]  # mask 1 painted last, on top


def test_uncompressed_and_string_counts_and_zero_length_runs():
    rng = np.random.default_rng(3)
    masks, class_map = random_case(rng, 6, 7, 9, 4)
    as_lists = [mask_to_rle(m, compressed=False) for m in masks]
    as_strings = [mask_to_rle(m) for m in masks]
    assert_same(masks, class_map, 4, as_lists)
    assert_same(masks, class_map, 4, as_strings)
    # Zero-length runs (legal in uncompressed RLE) change nothing.
    padded = [
        {"size": r["size"], "counts": [*encode_counts(m).tolist(), 0, 0]}
        for r, m in zip(as_lists, masks)
    ]
    assert_same(masks, class_map, 4, padded)


def test_runs_are_the_foreground_runs_in_column_major_order():
    mask = np.array([[1, 0, 1], [1, 0, 0]], dtype=bool)  # column-major: 1 1 0 0 1 0
    runs = rles_to_runs(coco_rles(mask[None]))
    assert runs.starts.tolist() == [0, 4]
    assert runs.lengths.tolist() == [2, 1]
    assert runs.mask_index.tolist() == [0, 0]
    assert runs.areas.tolist() == [3]


def test_no_masks():
    class_map = torch.tensor([[1, 2], [0, 1]])
    vote, painted = vote_and_paint_rles([], class_map, 3)
    assert vote.votes.shape == (0, 3)
    assert torch.equal(painted, class_map)
    with pytest.raises(ValueError, match="size"):
        rles_to_runs([])


def test_num_classes_defaults_to_max_plus_one():
    masks, class_map = random_case(np.random.default_rng(1), 5, 8, 8, 6)
    vote = vote_rle_classes(coco_rles(masks), torch.from_numpy(class_map))
    assert vote.votes.shape[1] == int(class_map.max()) + 1


def test_painted_dtype_follows_the_class_map():
    masks, class_map = random_case(np.random.default_rng(2), 5, 8, 8, 6)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        c = torch.from_numpy(class_map).to(dtype)
        runs = rles_to_runs(coco_rles(masks))
        votes = count_run_votes(runs, c, 6)
        ref = vote_mask_classes(torch.from_numpy(masks), c, 6)
        assert torch.equal(votes, ref.votes)
        painted = paint_runs(c, runs, ref.labels)
        assert painted.dtype == dtype
        assert torch.equal(painted, paint_masks(c, torch.from_numpy(masks), ref.labels))


def test_uint16_class_map_with_ids_above_255_on_every_path():
    """A class map read with torch.from_numpy from a uint16 mask (more than 255 classes): torch
    has no max/min or indexed writes for uint16, so every path raised NotImplementedError."""
    from fiftyone_ssa.core.rle_voting import vote_and_paint_masks

    masks, class_map = random_case(np.random.default_rng(3), 6, 9, 11, 40)
    class_map = class_map + 280
    ref_vote, ref_painted = dense(masks, class_map, 320)
    c16, m = torch.from_numpy(class_map.astype(np.uint16)), torch.from_numpy(masks)
    assert c16.dtype == torch.uint16
    dense_vote = vote_mask_classes(m, c16)
    results = [
        (dense_vote, paint_masks(c16, m, dense_vote.labels)),
        vote_and_paint_rles(coco_rles(masks), c16),
        vote_and_paint_rles(coco_rles(masks), c16, 320),
        vote_and_paint_masks(m, c16),
    ]
    for vote, painted in results:
        width = vote.votes.shape[1]  # max + 1 when num_classes is not given
        assert torch.equal(vote.votes, ref_vote.votes[:, :width])
        assert ref_vote.votes[:, width:].sum() == 0
        assert torch.equal(vote.labels, ref_vote.labels)
        assert painted.dtype == torch.uint16
        assert torch.equal(painted.long(), ref_painted)


def test_bad_arguments():
    mask = np.ones((1, 4, 5), dtype=bool)
    rles = coco_rles(mask)
    with pytest.raises(ValueError, match=r"size \[5, 4\]"):
        vote_rle_classes(rles, torch.zeros((5, 4), dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="integer ids"):
        vote_rle_classes(rles, torch.zeros((4, 5)), 2)
    with pytest.raises(ValueError, match=r"ids in \[0, 2\)"):
        vote_rle_classes(rles, torch.full((4, 5), 2), 2)
    with pytest.raises(ValueError, match="sum to"):
        rles_to_runs([{"size": [4, 5], "counts": [3, 4]}])
    with pytest.raises(ValueError, match="size"):
        rles_to_runs([rles[0], coco_rles(np.ones((1, 5, 4), dtype=bool))[0]])
    runs = rles_to_runs(rles)
    with pytest.raises(ValueError, match="labels"):
        paint_runs(torch.zeros((4, 5), dtype=torch.int64), runs, torch.zeros(2, dtype=torch.int64))


def test_sa1b_sized_image_matches_dense():
    """One 300x450 image with 40 ellipses over a blocky map (SA-1B's shape, scaled down)."""
    rng = np.random.default_rng(7)
    h, w = 300, 450
    small = rng.integers(0, 150, size=(h // 10 + 1, w // 10 + 1))
    class_map = np.kron(small, np.ones((10, 10), dtype=np.int64))[:h, :w]
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((40, h, w), dtype=bool)
    for i in range(40):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(2, h // 3), rng.integers(2, w // 3)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    assert_same(masks, class_map, 150)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 6), st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.integers(0, 99)
)
def test_dense_masks_through_runs_equal_dense_voting(n, h, w, c, seed):
    from fiftyone_ssa.core.rle_voting import vote_and_paint_masks

    masks, class_map = random_case(np.random.default_rng(seed), n, h, w, c)
    ref_vote, ref_painted = dense(masks, class_map, c)
    vote, painted = vote_and_paint_masks(torch.from_numpy(masks), torch.from_numpy(class_map), c)
    assert torch.equal(vote.votes, ref_vote.votes)
    assert torch.equal(vote.labels, ref_vote.labels)
    assert torch.equal(vote.areas, ref_vote.areas)
    assert torch.equal(painted, ref_painted)


def test_dense_masks_through_runs_check_sizes():
    from fiftyone_ssa.core.rle_voting import vote_and_paint_masks

    with pytest.raises(ValueError, match="same size"):
        vote_and_paint_masks(
            torch.zeros(2, 3, 4, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.long)
        )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.integers(1, 12), st.integers(1, 12), st.integers(0, 99))
def test_dense_masks_to_runs_are_the_maximal_row_major_runs(n, h, w, seed):
    """Read box by box, yet the same runs as COCO's runs of the transposed masks."""
    from fiftyone_ssa.core.rle_voting import dense_masks_to_runs, rles_to_runs

    masks, _ = random_case(np.random.default_rng(seed), n, h, w, 2)
    runs = dense_masks_to_runs(torch.from_numpy(masks))
    expected = rles_to_runs([mask_to_rle(m.T) for m in masks], size=(w, h))
    assert (runs.height, runs.width, runs.num_masks) == (w, h, n)
    assert torch.equal(runs.starts, expected.starts)
    assert torch.equal(runs.lengths, expected.lengths)
    assert torch.equal(runs.mask_index, expected.mask_index)
