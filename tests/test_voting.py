"""Semantic voting and painting against a naive per-mask reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiftyone_ssa.core.voting import (
    count_votes,
    paint_masks,
    painting_order,
    vote_mask_classes,
)
from tests.scenes import masks_of_kinds


def naive_ssa(masks: np.ndarray, class_map: np.ndarray, num_classes: int):
    """The original SSA loop: per mask, bincount its pixels; paint largest first."""
    n = masks.shape[0]
    areas = masks.reshape(n, masks.shape[1] * masks.shape[2]).sum(1)
    order = sorted(range(n), key=lambda i: -areas[i])  # Python's sort is stable
    labels = np.zeros(n, dtype=np.int64)
    out = class_map.copy()
    for i in order:
        counts = np.bincount(class_map[masks[i]], minlength=num_classes)
        labels[i] = int(np.argmax(counts))  # first max: lowest id on ties
        out[masks[i]] = labels[i]
    return labels, out


def random_case(rng, n, h, w, c, blobby=True):
    class_map = rng.integers(0, c, size=(h, w))
    if blobby:  # class regions rather than salt-and-pepper, so votes are not all ties
        small = rng.integers(0, c, size=(max(1, h // 4), max(1, w // 4)))
        class_map = np.kron(small, np.ones((4, 4), dtype=np.int64))[:h, :w]
        class_map = np.pad(class_map, ((0, h - class_map.shape[0]), (0, w - class_map.shape[1])))
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        masks[i, y0:y1, x0:x1] = True
        masks[i] &= rng.random((h, w)) > 0.1  # ragged shapes
    return masks, class_map


@pytest.mark.parametrize("seed", range(8))
def test_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    n, h, w, c = int(rng.integers(1, 40)), int(rng.integers(5, 60)), int(rng.integers(5, 60)), 7
    masks, class_map = random_case(rng, n, h, w, c)
    ref_labels, ref_out = naive_ssa(masks, class_map, c)
    vote = vote_mask_classes(torch.from_numpy(masks), torch.from_numpy(class_map), c)
    painted = paint_masks(torch.from_numpy(class_map), torch.from_numpy(masks), vote.labels)
    np.testing.assert_array_equal(vote.labels.numpy(), ref_labels)
    np.testing.assert_array_equal(painted.numpy(), ref_out)


def test_ties_go_to_lowest_id_and_equal_areas_keep_input_order():
    class_map = torch.tensor([[3, 3, 1, 1]])
    masks = torch.tensor([[[1, 1, 1, 1]], [[0, 0, 1, 1]], [[1, 1, 0, 0]]], dtype=torch.bool)
    vote = vote_mask_classes(masks, class_map, 4)
    assert vote.labels.tolist() == [1, 1, 3]  # 2 votes each for 1 and 3 -> 1
    # masks 1 and 2 have equal areas: painted in input order, both on top of mask 0
    assert painting_order(vote.areas).tolist() == [0, 1, 2]
    out = paint_masks(class_map, masks, vote.labels)
    assert out.tolist() == [[3, 3, 1, 1]]


def test_smaller_mask_wins_overlap_and_uncovered_pixels_keep_branch():
    class_map = torch.tensor([[0, 0, 0, 2, 2]])
    big = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)  # votes 0
    small = torch.tensor([[0, 0, 0, 1, 0]], dtype=torch.bool)  # votes 2
    masks = torch.stack([small, big])
    vote = vote_mask_classes(masks, class_map, 3)
    out = paint_masks(class_map, masks, vote.labels)
    assert out.tolist() == [[0, 0, 0, 2, 2]]
    # votes read the original map, not the partly painted one
    assert vote.labels.tolist() == [2, 0]


def test_confidence_and_proposals():
    class_map = torch.tensor([[0, 1, 1, 2, 2, 2]])
    masks = torch.tensor([[[1, 1, 1, 1, 1, 1]], [[0, 0, 0, 0, 0, 0]]], dtype=torch.bool)
    vote = vote_mask_classes(masks, class_map, 4)
    assert vote.confidence[0].item() == pytest.approx(0.5)
    assert vote.proposals(3) == [[2, 1, 0], []]
    assert vote.proposals(1) == [[2], []]
    assert vote.confidence[1].item() == 0.0
    with pytest.raises(ValueError, match="top_k"):
        vote.proposals(0)


def test_chunked_counting_equals_single_pass(monkeypatch):
    import fiftyone_ssa.core.voting as voting

    rng = np.random.default_rng(3)
    masks, class_map = random_case(rng, 25, 40, 50, 5)
    full = count_votes(torch.from_numpy(masks), torch.from_numpy(class_map), 5)
    monkeypatch.setattr(voting, "_MAX_PAIRS_PER_CHUNK", 100)
    monkeypatch.setattr(voting, "_MAX_PAINT_ELEMENTS", 2000)
    chunked = count_votes(torch.from_numpy(masks), torch.from_numpy(class_map), 5)
    assert torch.equal(full, chunked)
    ref_labels, ref_out = naive_ssa(masks, class_map, 5)
    out = paint_masks(
        torch.from_numpy(class_map), torch.from_numpy(masks), torch.from_numpy(ref_labels)
    )
    np.testing.assert_array_equal(out.numpy(), ref_out)


@pytest.mark.parametrize(
    "masks, class_map, match",
    [
        (torch.zeros(2, 3), torch.zeros(3, 3, dtype=torch.long), "masks"),
        (torch.zeros(1, 3, 3, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.long), "same"),
        (torch.zeros(1, 3, 3, dtype=torch.bool), torch.zeros(3, 3), "integer"),
        (torch.zeros(1, 2, 2, dtype=torch.bool), torch.full((2, 2), 9), r"\[0, 3\)"),
    ],
)
def test_bad_inputs_raise_value_error(masks, class_map, match):
    with pytest.raises(ValueError, match=match):
        count_votes(masks, class_map, 3)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 12),
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    c=st.integers(1, 6),
    full=st.booleans(),
)
def test_property_equals_reference(seed, n, h, w, c, full):
    rng = np.random.default_rng(seed)
    masks, class_map = random_case(rng, n, h, w, c, blobby=False)
    if full and n:
        masks[0] = True  # a full-image mask
    if n > 1:
        masks[-1] = False  # an empty mask
    ref_labels, ref_out = naive_ssa(masks, class_map, c)
    vote = vote_mask_classes(torch.from_numpy(masks), torch.from_numpy(class_map), c)
    out = paint_masks(torch.from_numpy(class_map), torch.from_numpy(masks), vote.labels)
    np.testing.assert_array_equal(out.numpy(), ref_out)
    nonempty = masks.reshape(n, h * w).any(1)
    np.testing.assert_array_equal(vote.labels.numpy()[nonempty], ref_labels[nonempty])


@pytest.mark.gpu
def test_cuda_equals_cpu():
    rng = np.random.default_rng(0)
    masks, class_map = random_case(rng, 60, 300, 400, 20)
    cpu = vote_mask_classes(torch.from_numpy(masks), torch.from_numpy(class_map), 20)
    gpu = vote_mask_classes(torch.from_numpy(masks).cuda(), torch.from_numpy(class_map).cuda(), 20)
    assert torch.equal(cpu.votes, gpu.votes.cpu())
    out_cpu = paint_masks(torch.from_numpy(class_map), torch.from_numpy(masks), cpu.labels)
    out_gpu = paint_masks(
        torch.from_numpy(class_map).cuda(), torch.from_numpy(masks).cuda(), gpu.labels
    )
    assert torch.equal(out_cpu, out_gpu.cpu())


# --------------------------------------------------------------- properties (issue 10)


@st.composite
def mask_stacks(draw):
    """Random (masks, class map, C): random shapes, rectangles and ragged blobs that overlap,
    exact duplicates, empty masks and full-image masks."""
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    c = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    class_map = rng.integers(0, c, size=(h, w))
    kinds = draw(st.lists(st.sampled_from(["rect", "ragged", "empty", "full", "dup"]), max_size=9))
    stack = masks_of_kinds(rng, h, w, kinds)
    return stack, class_map, c


@settings(max_examples=150, deadline=None)
@given(mask_stacks(), st.integers(1, 4))
def test_property_vote_invariants(case, top_k):
    """Votes sum to the area; the label wins (lowest id on ties) with confidence votes/area;
    proposals are the classes with votes, by share, the label first; duplicates agree."""
    masks, class_map, c = case
    vote = vote_mask_classes(torch.from_numpy(masks), torch.from_numpy(class_map), c)
    areas = masks.reshape(len(masks), masks.shape[1] * masks.shape[2]).sum(1)
    np.testing.assert_array_equal(vote.areas.numpy(), areas)
    np.testing.assert_array_equal(vote.votes.sum(1).numpy(), areas)
    proposals = vote.proposals(top_k)
    for i, mask in enumerate(masks):
        counts = np.bincount(class_map[mask], minlength=c)
        np.testing.assert_array_equal(vote.votes[i].numpy(), counts)
        label = int(vote.labels[i])
        if areas[i] == 0:
            assert label == 0 and float(vote.confidence[i]) == 0.0 and proposals[i] == []
            continue
        assert label == int(np.flatnonzero(counts == counts.max())[0])
        assert float(vote.confidence[i]) == pytest.approx(counts[label] / areas[i])
        assert 0 < float(vote.confidence[i]) <= 1
        assert proposals[i][0] == label and len(proposals[i]) <= top_k
        shares = [counts[k] for k in proposals[i]]
        assert all(s > 0 for s in shares) and shares == sorted(shares, reverse=True)
        expected = sorted(np.flatnonzero(counts), key=lambda k: (-counts[k], k))[:top_k]
        assert proposals[i] == [int(k) for k in expected]
    for i in range(len(masks)):
        for j in range(i):
            if np.array_equal(masks[i], masks[j]):
                assert int(vote.labels[i]) == int(vote.labels[j])


@settings(max_examples=150, deadline=None)
@given(mask_stacks())
def test_property_painting_invariants(case):
    """Uncovered pixels keep the branch; a covered pixel takes the label of the smallest mask
    covering it (the latest in input order among equal areas); a full-image mask alone
    paints everything its label."""
    masks, class_map, c = case
    vote = vote_mask_classes(torch.from_numpy(masks), torch.from_numpy(class_map), c)
    out = paint_masks(torch.from_numpy(class_map), torch.from_numpy(masks), vote.labels).numpy()
    covered = masks.any(0) if len(masks) else np.zeros(class_map.shape, bool)
    np.testing.assert_array_equal(out[~covered], class_map[~covered])
    areas = masks.reshape(len(masks), masks.shape[1] * masks.shape[2]).sum(1)
    labels = vote.labels.numpy()
    for y, x in zip(*np.nonzero(covered)):
        over = [i for i in range(len(masks)) if masks[i, y, x]]
        top = min(over, key=lambda i: (areas[i], -i))
        assert out[y, x] == labels[top]
    if len(masks) == 1 and masks[0].all():
        assert (out == labels[0]).all()
    assert out.dtype == class_map.dtype
