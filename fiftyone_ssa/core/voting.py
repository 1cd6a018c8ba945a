"""Semantic voting: one class per mask from a per-pixel class map, and painting the result.

The algorithm is SSA's (README, "How a mask's class is decided"): masks are ordered by area, largest first (stable);
each mask takes the class most of its pixels have in the branch's class map (ties go to the
lowest class id; votes always read the original map); the output starts as a copy of the class
map and each mask is painted with its class in that order, so smaller masks overwrite larger
ones where they overlap and pixels no mask covers keep the branch's class.

Everything runs on the device the inputs are on, with one batched count for all masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Upper bound on (mask, pixel) pairs handled at once when counting votes; keeps the int64
# index tensors at about 256 MB however many masks an image has.
_MAX_PAIRS_PER_CHUNK = 1 << 24
# Upper bound on mask pixels materialised at once when painting.
_MAX_PAINT_ELEMENTS = 1 << 26
# Unsigned dtypes wider than 8 bits (a uint16 class map read with ``torch.from_numpy``): torch
# implements few operations on them (no min/max, no indexed writes), so they are worked on as
# int64 and the painted map is cast back.
WIDE_UNSIGNED_DTYPES = (torch.uint16, torch.uint32, torch.uint64)


def as_supported_ids(class_map: torch.Tensor) -> torch.Tensor:
    """The class map itself, or as int64 when torch cannot compute on its dtype (uint16/32/64).

    Args:
        class_map: (H, W) integer class ids.

    Returns:
        (H, W) integer class ids that torch's reductions and indexed writes accept.
    """
    return class_map.long() if class_map.dtype in WIDE_UNSIGNED_DTYPES else class_map


@dataclass
class VoteResult:
    """The outcome of voting for N masks over C classes.

    Attributes:
        votes: (N, C) int64, pixels of each mask per class of the branch's map.
        areas: (N,) int64, pixels per mask.
        labels: (N,) int64, the winning class of each mask (lowest id on ties; 0 for an
            empty mask).
        confidence: (N,) float32, votes of the winning class / area (0 for an empty mask).
    """

    votes: torch.Tensor
    areas: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor

    @classmethod
    def from_votes(cls, votes: torch.Tensor) -> VoteResult:
        """Areas, winning labels and confidences of (N, C) int64 votes.

        Args:
            votes: (N, C) int64, pixels of each mask per class.
        """
        areas = votes.sum(dim=1)
        # argmax returns the first maximal index, i.e. the lowest class id on ties.
        labels = votes.argmax(dim=1) if votes.shape[1] else torch.zeros_like(areas)
        winning = votes.gather(1, labels[:, None]).squeeze(1)
        confidence = torch.where(
            areas > 0,
            winning.float() / areas.clamp(min=1).float(),
            torch.zeros_like(areas).float(),
        )
        return cls(votes=votes, areas=areas, labels=labels, confidence=confidence)

    def proposals(self, top_k: int = 3) -> list[list[int]]:
        """Class ids of each mask ordered by vote share, descending, at most ``top_k``.

        Only classes with at least one vote are listed; ties are broken by the lowest id.

        Args:
            top_k: the number of proposals per mask.

        Returns:
            One list of class ids per mask.
        """
        if top_k < 1:
            raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
        k = min(top_k, self.votes.shape[1])
        if self.votes.shape[0] == 0 or k == 0:
            return [[] for _ in range(self.votes.shape[0])]
        # A stable descending sort keeps the lowest id first among equal counts.
        counts, ids = torch.sort(self.votes, dim=1, descending=True, stable=True)
        counts, ids = counts[:, :k].cpu().tolist(), ids[:, :k].cpu().tolist()
        return [
            [c for c, n in zip(row_ids, row_counts) if n > 0]
            for row_ids, row_counts in zip(ids, counts)
        ]


def _check_inputs(masks: torch.Tensor, class_map: torch.Tensor) -> None:
    if masks.dim() != 3:
        raise ValueError(f"Expected `masks` to be (N, H, W), but got shape {tuple(masks.shape)}")
    if class_map.dim() != 2:
        raise ValueError(
            f"Expected `class_map` to be (H, W), but got shape {tuple(class_map.shape)}"
        )
    if masks.shape[1:] != class_map.shape:
        raise ValueError(
            f"Expected `masks` and `class_map` to have the same (H, W), but got "
            f"{tuple(masks.shape[1:])} and {tuple(class_map.shape)}"
        )
    if masks.device != class_map.device:
        raise ValueError(
            f"Expected `masks` and `class_map` on one device, but got {masks.device} and "
            f"{class_map.device}"
        )
    if class_map.dtype.is_floating_point or class_map.dtype == torch.bool:
        raise ValueError(f"Expected `class_map` to hold integer ids, but got {class_map.dtype}")


def count_votes(masks: torch.Tensor, class_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, for every mask, its pixels per class of the class map.

    One ``bincount`` over all (mask, pixel) pairs, in chunks of masks to bound memory.

    Args:
        masks: (N, H, W) bool (or 0/1 integer) masks.
        class_map: (H, W) integer class ids in ``[0, num_classes)``.
        num_classes: C, the number of class ids.

    Returns:
        (N, C) int64 votes, on the masks' device.
    """
    _check_inputs(masks, class_map)
    if num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be >= 1, but got {num_classes}")
    n = masks.shape[0]
    flat_classes = class_map.reshape(-1).long()
    if flat_classes.numel() and (flat_classes.min() < 0 or flat_classes.max() >= num_classes):
        raise ValueError(
            f"Expected `class_map` ids in [0, {num_classes}), but got ids in "
            f"[{int(flat_classes.min())}, {int(flat_classes.max())}]"
        )
    flat_masks = masks.reshape(n, class_map.numel()).bool()
    votes = torch.zeros((n, num_classes), dtype=torch.int64, device=masks.device)
    if n == 0:
        return votes
    areas = flat_masks.sum(dim=1)
    start = 0
    while start < n:
        # Grow the chunk until it holds about _MAX_PAIRS_PER_CHUNK pairs (at least one mask).
        cumulative = torch.cumsum(areas[start:], dim=0)
        stop = start + max(1, int(torch.searchsorted(cumulative, _MAX_PAIRS_PER_CHUNK)))
        mask_idx, pix_idx = torch.nonzero(flat_masks[start:stop], as_tuple=True)
        keys = mask_idx * num_classes + flat_classes[pix_idx]
        votes[start:stop] = torch.bincount(keys, minlength=(stop - start) * num_classes).view(
            stop - start, num_classes
        )
        start = stop
    return votes


def vote_mask_classes(
    masks: torch.Tensor, class_map: torch.Tensor, num_classes: int | None = None
) -> VoteResult:
    """Votes one class per mask from the class map (SSA's semantic voting).

    Args:
        masks: (N, H, W) bool masks.
        class_map: (H, W) integer class ids of the semantic branch.
        num_classes: C; defaults to ``class_map.max() + 1``.

    Returns:
        The votes, areas, winning labels and confidences of the N masks.
    """
    if num_classes is None:
        num_classes = int(as_supported_ids(class_map).max()) + 1 if class_map.numel() else 1
    return VoteResult.from_votes(count_votes(masks, class_map, num_classes))


def painting_order(areas: torch.Tensor) -> torch.Tensor:
    """The order masks are painted in: area descending, equal areas in input order.

    Args:
        areas: (N,) mask areas.

    Returns:
        (N,) int64 indices into the masks.
    """
    return torch.sort(areas, descending=True, stable=True).indices


def paint_masks(
    class_map: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paints masks onto a copy of the class map, later masks in ``order`` on top.

    Equivalent to ``out = class_map.clone(); for i in order: out[masks[i]] = labels[i]``, but
    computed as "the last mask in painting order covering each pixel" in a few batched ops.

    Args:
        class_map: (H, W) integer class ids (the background left where no mask is).
        masks: (N, H, W) bool masks.
        labels: (N,) class id painted for each mask.
        order: (N,) painting order; defaults to :func:`painting_order` of the mask areas.

    Returns:
        (H, W) painted class map with ``class_map``'s dtype, on its device.
    """
    _check_inputs(masks, class_map)
    n = masks.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"Expected `labels` to be ({n},), but got shape {tuple(labels.shape)}")
    if class_map.dtype in WIDE_UNSIGNED_DTYPES:
        return paint_masks(class_map.long(), masks, labels, order).to(class_map.dtype)
    if n == 0:
        return class_map.clone(memory_format=torch.contiguous_format)
    flat_masks = masks.reshape(n, class_map.numel()).bool()
    if order is None:
        order = painting_order(flat_masks.sum(dim=1))
    # rank[i] = 1 + position of mask i in the painting order; the topmost mask has the largest.
    rank = torch.empty(n, dtype=torch.int32, device=masks.device)
    rank[order] = torch.arange(1, n + 1, dtype=torch.int32, device=masks.device)
    pixels = flat_masks.shape[1]
    top = torch.zeros(pixels, dtype=torch.int32, device=masks.device)
    step = max(1, _MAX_PAINT_ELEMENTS // max(pixels, 1))
    for start in range(0, n, step):
        chunk = flat_masks[start : start + step]
        ranked = chunk.to(torch.int32) * rank[start : start + step, None]
        top = torch.maximum(top, ranked.amax(dim=0))
    covered = top > 0
    # label_by_rank[r] = label of the mask with rank r.
    label_by_rank = torch.zeros(n + 1, dtype=labels.dtype, device=labels.device)
    label_by_rank[rank.long()] = labels
    # Computed, not written through ``class_map.reshape(-1)``: for a non-contiguous map (a
    # transposed or sliced view) that reshape is a copy, and writes into it would be lost.
    painted = label_by_rank[top.long()].to(class_map.dtype)
    return torch.where(covered, painted, class_map.reshape(-1)).view(class_map.shape)
