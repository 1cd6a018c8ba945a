"""Doubt per mask (core.doubt) and its use in label_one_image, against naive references."""

import math

import numpy as np
import pytest
import torch

from fiftyone_ssa.core.doubt import (
    ENGINE_WEIGHTS,
    SSA_WEIGHTS,
    branch_disagreement,
    clip_margins,
    engine_doubts,
    review_score,
    ssa_doubts,
    vote_margins,
)
from fiftyone_ssa.core.ssa import label_one_image, vote_and_paint
from tests.test_voting import random_case


def naive_signals(masks: np.ndarray, class_map: np.ndarray, num_classes: int):
    """Per mask, with plain loops: label, vote margin, and the branch disagreement over the
    pixels it paints (painted largest first, stable)."""
    n = masks.shape[0]
    areas = masks.reshape(n, -1).sum(1)
    order = sorted(range(n), key=lambda i: -areas[i])
    owner = np.zeros(class_map.shape, dtype=np.int64)
    labels, margins = [], []
    for i in range(n):
        counts = np.bincount(class_map[masks[i]], minlength=num_classes)
        labels.append(int(np.argmax(counts)))
        ranked = sorted(counts, reverse=True) + [0]
        margins.append((ranked[0] - ranked[1]) / areas[i] if areas[i] else 0.0)
    for i in order:
        owner[masks[i]] = i + 1
    disagreement = []
    for i in range(n):
        mine = owner == i + 1
        if not mine.any():
            disagreement.append(math.nan)
        else:
            disagreement.append(float((class_map[mine] != labels[i]).mean()))
    return np.array(labels), np.array(margins), np.array(disagreement)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("through_runs", [True, False])
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.uint16])
def test_signals_match_naive_reference(seed, through_runs, dtype):
    rng = np.random.default_rng(seed)
    n, h, w, c = int(rng.integers(2, 30)), int(rng.integers(5, 50)), int(rng.integers(5, 50)), 6
    masks, class_map = random_case(rng, n, h, w, c)
    masks[0] = False  # an empty mask paints nothing
    masks[1] = masks[1] | masks[-1]  # mask 1 holds the last mask; it paints only the rest
    class_map = class_map.astype(dtype)
    vote, painted, dis = vote_and_paint(
        torch.from_numpy(class_map), torch.from_numpy(masks), c, through_runs
    )
    ref_labels, ref_margin, ref_dis = naive_signals(masks, class_map.astype(np.int64), c)
    np.testing.assert_array_equal(vote.labels.numpy(), ref_labels)
    ref_painted = class_map.copy()
    for i in sorted(range(len(masks)), key=lambda i: -masks[i].sum()):
        ref_painted[masks[i]] = ref_labels[i]
    assert painted.dtype == torch.from_numpy(class_map).dtype
    np.testing.assert_array_equal(painted.numpy(), ref_painted)
    margin = vote_margins(vote.votes)
    np.testing.assert_allclose(margin.numpy(), ref_margin, rtol=1e-6)
    np.testing.assert_allclose(dis.numpy(), ref_dis, rtol=1e-6)
    assert math.isnan(float(dis[0])) and float(margin[0]) == 0.0
    assert margin.dtype == dis.dtype == torch.float32


def test_label_one_image_carries_the_signals():
    rng = np.random.default_rng(3)
    masks, class_map = random_case(rng, 12, 30, 40, 5)
    labels = label_one_image(torch.from_numpy(class_map), torch.from_numpy(masks), 5)
    _, ref_margin, ref_dis = naive_signals(masks, class_map, 5)
    np.testing.assert_allclose(labels.margin.numpy(), ref_margin, rtol=1e-6)
    np.testing.assert_allclose(labels.branch_disagreement.numpy(), ref_dis, rtol=1e-6)
    nan = torch.full((12,), float("nan"))
    score = labels.review_score(nan, nan)
    w_margin, w_branch = SSA_WEIGHTS["vote_margin"], SSA_WEIGHTS["branch_disagreement"]
    expected = [
        (w_margin * (1 - m) + w_branch * d) / (w_margin + w_branch) if not math.isnan(d) else 1 - m
        for m, d in zip(ref_margin, ref_dis)
    ]
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)


def test_painting_over_the_branch_is_doubted():
    """A large mask whose majority lies under a smaller mask of the same class paints its
    class over pixels the branch calls something else: its disagreement says so, though its
    vote share is high."""
    class_map = torch.zeros((10, 10), dtype=torch.int64)
    class_map[:, :7] = 1  # a person over 70% of the image, grass elsewhere
    big = torch.ones((10, 10), dtype=torch.bool)  # the whole image
    person = class_map == 1
    labels = label_one_image(class_map, torch.stack([big, person]), 2)
    assert labels.labels.tolist() == [1, 1]
    assert float(labels.vote.confidence[0]) == pytest.approx(0.7)
    assert float(labels.branch_disagreement[0]) == 1.0  # it paints only the grass
    assert float(labels.branch_disagreement[1]) == 0.0
    assert labels.margin.tolist() == pytest.approx([0.4, 1.0])


def test_vote_margins_single_class_and_ties():
    votes = torch.tensor([[5, 0, 0], [2, 2, 0], [0, 0, 0], [1, 3, 4]])
    assert vote_margins(votes).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.125])
    assert vote_margins(torch.tensor([[7]])).tolist() == [1.0]
    assert vote_margins(torch.zeros((0, 4), dtype=torch.int64)).shape == (0,)
    with pytest.raises(ValueError, match="Expected `votes` to be"):
        vote_margins(torch.zeros(3))


def test_clip_margins():
    prob, margin = clip_margins(
        ["a", "b", "c", "z", "x"],
        [["a", "b", "c"], ["a", "b"], ["c"], ["a", "b"], ["x", "y"]],
        [[0.6, 0.3, 0.1], [0.7, 0.2], [1.0], [0.5, 0.5], [0.5, 0.5]],
    )
    assert prob.tolist()[:3] == pytest.approx([0.6, 0.2, 1.0])
    assert margin.tolist()[:3] == pytest.approx([0.3, -0.5, 1.0])
    assert math.isnan(prob[3]) and math.isnan(margin[3])  # a name not among the proposals
    assert margin.tolist()[4] == 0.0


def test_review_score_weighted_mean_skips_missing_signals():
    nan = float("nan")
    doubts = {"a": torch.tensor([0.0, 1.0, nan, nan]), "b": torch.tensor([1.0, 1.0, 0.5, nan])}
    score = review_score(doubts, {"a": 3.0, "b": 1.0})
    assert score.tolist()[:3] == pytest.approx([0.25, 1.0, 0.5])
    assert math.isnan(score[3])
    with pytest.raises(ValueError, match="weight for every doubt"):
        review_score(doubts, {"a": 1.0})
    with pytest.raises(ValueError, match="weights > 0"):
        review_score(doubts, {"a": 1.0, "b": 0.0})


def test_doubts_are_in_unit_range_and_ordered():
    """More evidence for the class never raises the score."""
    ssa = ssa_doubts(
        torch.tensor([0.0, 0.5, 1.0]),
        torch.tensor([1.0, 0.5, 0.0]),
        torch.tensor([0.5, 0.9, 1.2]),  # a predicted IoU may exceed 1: clamped
        torch.tensor([0.5, 0.9, 1.0]),
    )
    score = review_score(ssa, SSA_WEIGHTS)
    assert score.tolist() == sorted(score.tolist(), reverse=True)
    assert float(score[0]) <= 1.0 and float(score[2]) == 0.0
    engine = engine_doubts(
        torch.tensor([-0.4, 0.2, 0.9]),
        torch.tensor([0.3, 0.6, 1.0]),
        torch.tensor([False, True, True]),
        torch.tensor([nan := float("nan"), nan, nan]),
        torch.tensor([nan, nan, nan]),
    )
    score = review_score(engine, ENGINE_WEIGHTS)
    assert score.tolist() == sorted(score.tolist(), reverse=True)
    assert float(score[0]) == pytest.approx(1.0 - 0.3 / 3)


def test_review_score_benchmark_runs_at_a_tiny_size(capsys):
    from benchmarks import bench_review_score

    result = bench_review_score.main(["--images", "4", "--size", "60x80", "--seed", "1"])
    out = capsys.readouterr().out
    assert f"{result['masks']} masks, {result['wrong']} wrong" in out
    assert result["masks"] > 10 and 0 <= result["confidently_wrong"] <= result["wrong"]
    assert set(result["ranking"]) >= {"review_score", "1 - vote margin", "branch_disagreement"}
    for precision, recall in result["ranking"].values():
        assert 0.0 <= precision <= 1.0 and 0.0 <= recall <= 1.0
    # header, rule, the random row, one row per ranking
    assert out.count("\n| ") == 3 + len(result["ranking"])


def test_branch_disagreement_counts_painted_pixels_only():
    owner = torch.tensor([[1, 1, 2], [0, 2, 2]])
    class_map = torch.tensor([[3, 4, 4], [4, 4, 1]])
    painted = torch.tensor([[3, 3, 4], [4, 4, 4]])  # mask 1 is class 3, mask 2 class 4
    dis = branch_disagreement(owner, class_map, painted, 3)
    assert dis[:2].tolist() == pytest.approx([0.5, 1 / 3]) and math.isnan(dis[2])
    # any layout, as long as the three maps share it
    same = branch_disagreement(owner.t(), class_map.t(), painted.t(), 3)
    assert same[:2].tolist() == dis[:2].tolist()
    with pytest.raises(ValueError, match="`owner` values in"):
        branch_disagreement(owner, class_map, painted, 1)
    with pytest.raises(ValueError, match="of one"):
        branch_disagreement(owner, class_map, painted[:1], 3)
