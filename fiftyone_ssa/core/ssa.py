"""SSA close-set on one image: the branch's class map and the masks -> voted, painted labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fiftyone_ssa.core.doubt import (
    SSA_WEIGHTS,
    branch_disagreement,
    review_score,
    ssa_doubts,
    vote_margins,
)
from fiftyone_ssa.core.rle_voting import dense_masks_to_runs, paint_runs, vote_rle_classes
from fiftyone_ssa.core.voting import (
    VoteResult,
    as_supported_ids,
    paint_masks,
    painting_order,
    vote_mask_classes,
)


@dataclass
class ImageLabels:
    """What SSA decides for one image.

    Attributes:
        painted: (H, W) the class map with every mask painted with its class (the branch's
            dtype, on its device).
        vote: the vote of the N masks (labels, confidences, areas, votes per class).
        proposals: N lists of class ids by vote share, descending.
        margin: (N,) float32, vote share of the winning class minus the runner-up's.
        branch_disagreement: (N,) float32, share of the pixels each mask paints (where it is
            the topmost mask) whose branch class differs from its class; NaN for a mask that
            paints none.
    """

    painted: torch.Tensor
    vote: VoteResult
    proposals: list[list[int]]
    margin: torch.Tensor
    branch_disagreement: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64, the class of each mask."""
        return self.vote.labels

    def review_score(
        self, predicted_iou: torch.Tensor, stability_score: torch.Tensor
    ) -> torch.Tensor:
        """(N,) float32 in [0, 1], higher = more likely wrong (``core.doubt``).

        Args:
            predicted_iou: (N,) SAM's predicted IoU of each mask, NaN where unknown.
            stability_score: (N,) SAM's stability score, NaN where unknown.
        """
        device = self.margin.device
        doubts = ssa_doubts(
            self.margin,
            self.branch_disagreement,
            predicted_iou.to(device),
            stability_score.to(device),
        )
        return review_score(doubts, SSA_WEIGHTS)


def label_one_image(
    class_map: torch.Tensor, masks: torch.Tensor, num_classes: int | None = None, top_k: int = 3
) -> ImageLabels:
    """SSA close-set for one image: each mask's class by vote, masks painted largest first.

    Each mask takes the class most of its pixels have in the branch's map (ties: the lowest
    id; votes always read the branch's map); the masks are then painted onto a copy of it,
    largest first, so smaller masks win where they overlap.

    Args:
        class_map: (H, W) integer class ids of the semantic branch.
        masks: (N, H, W) bool masks on the same device.
        num_classes: C, at least one more than the largest id; by default from the map.
        top_k: proposals per mask.

    Returns:
        The painted map, the vote, the proposals and each mask's doubt signals.
    """
    if num_classes is None:
        num_classes = int(class_map.max()) + 1 if class_map.numel() else 1
    # Same results; through the masks' runs it is about 13x faster on the CPU
    # (benchmarks/RESULTS.md, 1500x2250 with 100 masks).
    vote, painted, disagreement = vote_and_paint(
        class_map, masks, num_classes, through_runs=masks.device.type == "cpu"
    )
    return ImageLabels(
        painted=painted,
        vote=vote,
        proposals=vote.proposals(top_k),
        margin=vote_margins(vote.votes),
        branch_disagreement=disagreement,
    )


def vote_and_paint(
    class_map: torch.Tensor, masks: torch.Tensor, num_classes: int, through_runs: bool
) -> tuple[VoteResult, torch.Tensor, torch.Tensor]:
    """SSA's vote and painting, and each mask's branch disagreement.

    Args:
        class_map: (H, W) integer class ids of the semantic branch.
        masks: (N, H, W) bool masks on the same device.
        num_classes: C.
        through_runs: work on the masks' runs (``core.rle_voting``; fast on the CPU) rather
            than on the dense masks (``core.voting``); the results are the same.

    Returns:
        ``(vote, painted, disagreement)``: the vote; the (H, W) painted map (the branch's
        dtype, contiguous); (N,) float32 :func:`~fiftyone_ssa.core.doubt.branch_disagreement`.
    """
    if masks.dim() != 3 or class_map.dim() != 2 or masks.shape[1:] != class_map.shape:
        raise ValueError(
            f"Expected masks (N, H, W) and a class map (H, W) of the same size, but got "
            f"{tuple(masks.shape)} and {tuple(class_map.shape)}"
        )
    n = masks.shape[0]
    numbers = torch.arange(1, n + 1, device=masks.device)
    if through_runs:
        # The runs describe the transposed masks (see dense_masks_to_runs): everything is
        # computed on the transposed maps, and the painted map transposed back at the end.
        runs = dense_masks_to_runs(masks)
        ids = as_supported_ids(class_map.t().contiguous())
        vote = vote_rle_classes(runs, ids, num_classes)
        blank = torch.zeros(ids.shape, dtype=torch.int64, device=ids.device)
        owner = paint_runs(blank, runs, numbers, painting_order(vote.areas))
    else:
        ids = as_supported_ids(class_map)
        vote = vote_mask_classes(masks, class_map, num_classes)
        blank = torch.zeros(ids.shape, dtype=torch.int64, device=ids.device)
        owner = paint_masks(blank, masks, numbers, painting_order(vote.areas))
    # Each pixel shows the class of its topmost mask, or keeps the branch's where none is.
    label_of = torch.cat([vote.labels.new_zeros(1), vote.labels]).to(ids.device, ids.dtype)
    painted = torch.where(owner > 0, label_of[owner], ids)
    disagreement = branch_disagreement(owner, ids, painted, n)
    if through_runs:
        painted = painted.t()
    return vote, painted.to(class_map.dtype).contiguous(), disagreement
