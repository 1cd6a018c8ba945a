"""SSA's voting and painting straight from COCO RLEs, in run space (no dense masks).

A COCO RLE lists a mask's runs in column-major order. The class map, read in the same order,
is itself a sequence of runs of equal class ids (few per column for a semantic map). A mask's
votes are the lengths of the pieces its foreground runs cut out of the class runs, summed per
class: the work is proportional to the number of runs, not to the number of pixels, and no
(N, H, W) tensor is ever built. Painting writes each mask's runs into a column-major copy of the
class map, in painting order.

The results are exactly those of :mod:`fiftyone_ssa.core.voting` on the decoded masks: the same
votes, areas, labels (ties go to the lowest class id), confidences, painting order (area
descending, stable) and painted map (smaller masks on top; uncovered pixels keep the class map).

Works on any device: the RLE strings are parsed on the CPU, the runs travel to the class map's
device in one transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fiftyone_ssa.core.crops import mask_boxes_xyxy
from fiftyone_ssa.core.rle import RLE, rle_runs
from fiftyone_ssa.core.voting import (
    WIDE_UNSIGNED_DTYPES,
    VoteResult,
    as_supported_ids,
    painting_order,
)


@dataclass
class MaskRuns:
    """The foreground runs of N masks of one image, in column-major pixel order.

    Attributes:
        height: H.
        width: W.
        num_masks: N.
        starts: (M,) int64, first pixel of each run (index into the column-major flat image).
        lengths: (M,) int64, pixels per run (all > 0).
        mask_index: (M,) int64, the mask each run belongs to (non-decreasing).
    """

    height: int
    width: int
    num_masks: int
    starts: torch.Tensor
    lengths: torch.Tensor
    mask_index: torch.Tensor

    @property
    def areas(self) -> torch.Tensor:
        """(N,) int64 pixels per mask."""
        areas = torch.zeros(self.num_masks, dtype=torch.int64, device=self.starts.device)
        return areas.index_add_(0, self.mask_index, self.lengths)

    def to(self, device: torch.device | str) -> MaskRuns:
        """The same runs on ``device``."""
        return MaskRuns(
            self.height,
            self.width,
            self.num_masks,
            self.starts.to(device),
            self.lengths.to(device),
            self.mask_index.to(device),
        )


def rles_to_runs(
    rles: Sequence[RLE],
    size: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> MaskRuns:
    """Parses COCO RLEs of one image into their foreground runs.

    Args:
        rles: N dicts ``{"size": [h, w], "counts": str | bytes | list[int]}``, all one size.
        size: the expected (H, W); required when ``rles`` is empty.
        device: where the runs go (default: the CPU).

    Returns:
        The masks' foreground runs.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    parsed = [rle_runs(rle) for rle in rles]
    if size is None:
        if not parsed:
            raise ValueError("Expected `size` when `rles` is empty, but got None")
        size = (parsed[0][0], parsed[0][1])
    h, w = int(size[0]), int(size[1])
    for i, (hi, wi, runs) in enumerate(parsed):
        if (hi, wi) != (h, w):
            raise ValueError(
                f"Expected all RLEs to have size [{h}, {w}], but RLE {i} has size [{hi}, {wi}]"
            )
        total = int(runs.sum())
        if total != h * w:
            raise ValueError(
                f"Expected the counts of RLE {i} to sum to height * width = {h * w}, "
                f"but they sum to {total}"
            )
    n = len(parsed)
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return MaskRuns(h, w, 0, empty, empty.clone(), empty.clone())
    counts = [runs for _, _, runs in parsed]
    per_mask = np.array([len(r) for r in counts], dtype=np.int64)
    runs = np.concatenate(counts)
    mask_of_run = np.repeat(np.arange(n, dtype=np.int64), per_mask)
    # Run ends within each mask: every mask's runs sum to h * w (checked above).
    ends = np.cumsum(runs) - mask_of_run * (h * w)
    local = np.arange(len(runs)) - np.repeat(np.cumsum(per_mask) - per_mask, per_mask)
    keep = (local % 2 == 1) & (runs > 0)  # runs of ones, empty ones dropped
    packed = np.stack([ends[keep] - runs[keep], runs[keep], mask_of_run[keep]])
    packed = torch.from_numpy(packed).to(device)
    return MaskRuns(h, w, n, packed[0], packed[1], packed[2])


def _column_major(class_map: torch.Tensor) -> torch.Tensor:
    return class_map.t().reshape(-1)


def _check_class_map(class_map: torch.Tensor, runs: MaskRuns) -> None:
    if class_map.dim() != 2:
        raise ValueError(
            f"Expected `class_map` to be (H, W), but got shape {tuple(class_map.shape)}"
        )
    if tuple(class_map.shape) != (runs.height, runs.width):
        raise ValueError(
            f"Expected `class_map` to be ({runs.height}, {runs.width}) like the masks, but got "
            f"{tuple(class_map.shape)}"
        )
    if class_map.dtype.is_floating_point or class_map.dtype == torch.bool:
        raise ValueError(f"Expected `class_map` to hold integer ids, but got {class_map.dtype}")


def count_run_votes(runs: MaskRuns, class_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels of each mask per class of the class map, counted run against run.

    Args:
        runs: the masks' foreground runs (see :func:`rles_to_runs`).
        class_map: (H, W) integer class ids in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        (N, C) int64 votes on the class map's device, equal to
        :func:`fiftyone_ssa.core.voting.count_votes` of the decoded masks.
    """
    _check_class_map(class_map, runs)
    if num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be >= 1, but got {num_classes}")
    device = class_map.device
    runs = runs.to(device)
    flat = _column_major(as_supported_ids(class_map))
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        raise ValueError(
            f"Expected `class_map` ids in [0, {num_classes}), but got ids in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    votes = torch.zeros(runs.num_masks * num_classes, dtype=torch.int64, device=device)
    if runs.starts.numel() == 0:
        return votes.view(runs.num_masks, num_classes)
    # The class map's own runs: where each begins (plus the end of the image) and its class.
    changes = torch.nonzero(flat[1:] != flat[:-1]).squeeze(1) + 1
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    bounds = torch.cat([zero, changes, zero + flat.numel()])
    classes = flat[bounds[:-1]].long()
    ends = runs.starts + runs.lengths
    first = torch.searchsorted(bounds, runs.starts, right=True) - 1
    last = torch.searchsorted(bounds, ends - 1, right=True) - 1
    pieces = last - first + 1  # class runs each mask run overlaps
    run_of_piece = torch.repeat_interleave(torch.arange(len(pieces), device=device), pieces)
    offsets = torch.cumsum(pieces, 0) - pieces
    k = first[run_of_piece] + torch.arange(len(run_of_piece), device=device)
    k -= offsets[run_of_piece]
    lo = torch.maximum(bounds[k], runs.starts[run_of_piece])
    hi = torch.minimum(bounds[k + 1], ends[run_of_piece])
    keys = runs.mask_index[run_of_piece] * num_classes + classes[k]
    votes.index_add_(0, keys, hi - lo)
    return votes.view(runs.num_masks, num_classes)


def vote_rle_classes(
    rles: Sequence[RLE] | MaskRuns, class_map: torch.Tensor, num_classes: int | None = None
) -> VoteResult:
    """SSA's semantic voting for masks given as COCO RLEs (see :func:`count_run_votes`).

    Args:
        rles: N COCO RLEs of the class map's size, or their :class:`MaskRuns`.
        class_map: (H, W) integer class ids of the semantic branch.
        num_classes: C; defaults to ``class_map.max() + 1``.

    Returns:
        The votes, areas, winning labels and confidences, as
        :func:`fiftyone_ssa.core.voting.vote_mask_classes` gives them for the decoded masks.
    """
    runs = _as_runs(rles, class_map)
    if num_classes is None:
        num_classes = int(as_supported_ids(class_map).max()) + 1 if class_map.numel() else 1
    return VoteResult.from_votes(count_run_votes(runs, class_map, num_classes))


def paint_runs(
    class_map: torch.Tensor,
    runs: MaskRuns,
    labels: torch.Tensor,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paints masks given by their runs onto a copy of the class map, later in ``order`` on top.

    Equivalent to :func:`fiftyone_ssa.core.voting.paint_masks` on the decoded masks.

    Args:
        class_map: (H, W) integer class ids.
        runs: the masks' foreground runs.
        labels: (N,) class id painted for each mask.
        order: (N,) painting order; defaults to area descending (stable).

    Returns:
        (H, W) painted class map with ``class_map``'s dtype, on its device.
    """
    _check_class_map(class_map, runs)
    n = runs.num_masks
    if labels.shape != (n,):
        raise ValueError(f"Expected `labels` to be ({n},), but got shape {tuple(labels.shape)}")
    if class_map.dtype in WIDE_UNSIGNED_DTYPES:
        return paint_runs(class_map.long(), runs, labels, order).to(class_map.dtype)
    device = class_map.device
    runs = runs.to(device)
    if order is None:
        order = painting_order(runs.areas)
    flat = _column_major(class_map).clone()
    if n == 0 or runs.starts.numel() == 0:
        return flat.view(runs.width, runs.height).t().contiguous()
    rank = torch.empty(n, dtype=torch.int64, device=device)
    rank[order.to(device)] = torch.arange(1, n + 1, device=device)
    top = _topmost_rank(
        runs.starts, runs.starts + runs.lengths, rank[runs.mask_index], flat.numel()
    )
    # label_by_rank[r] = label of the mask painted r-th; rank 0 = no mask, keep the class map.
    label_by_rank = torch.zeros(n + 1, dtype=flat.dtype, device=device)
    label_by_rank[rank] = labels.to(device, flat.dtype)
    flat = torch.where(top > 0, label_by_rank[top], flat)
    return flat.view(runs.width, runs.height).t().contiguous()


def _topmost_rank(
    starts: torch.Tensor, ends: torch.Tensor, ranks: torch.Tensor, num_pixels: int
) -> torch.Tensor:
    """For every pixel, the largest rank of the runs covering it (0 where none does).

    The run boundaries cut the image into S elementary segments; each run covers a range of
    them. "Range max-assign, point query" is answered offline with a sparse table: a run over
    ``[a, b)`` writes its rank into the two power-of-two blocks of level ``floor(log2(b - a))``
    that cover the range, and the levels are pushed down to single segments. Exact, with no
    repeated-index writes: O(M + S log S) for M runs.

    Args:
        starts: (M,) int64 first pixel of each run.
        ends: (M,) int64 end (exclusive) of each run, > start.
        ranks: (M,) int64 ranks >= 1.
        num_pixels: H * W.

    Returns:
        (num_pixels,) int64.
    """
    device = starts.device
    edges = torch.tensor([0, num_pixels], dtype=torch.int64, device=device)
    points = torch.unique(torch.cat([edges, starts, ends]))  # sorted
    num_segments = points.numel() - 1
    a = torch.searchsorted(points, starts)
    b = torch.searchsorted(points, ends)
    span = b - a  # >= 1
    level = torch.floor(torch.log2(span.double())).long()
    level -= ((1 << level) > span).long()  # guard against rounding either way
    level += ((1 << (level + 1)) <= span).long()
    levels = int(level.max()) + 1
    table = torch.zeros(levels * num_segments, dtype=torch.int64, device=device)
    index = torch.cat([level * num_segments + a, level * num_segments + b - (1 << level)])
    table.scatter_reduce_(0, index, torch.cat([ranks, ranks]), reduce="amax")
    table = table.view(levels, num_segments)
    for lv in range(levels - 1, 0, -1):
        half = 1 << (lv - 1)
        table[lv - 1] = torch.maximum(table[lv - 1], table[lv])
        table[lv - 1, half:] = torch.maximum(table[lv - 1, half:], table[lv, : num_segments - half])
    lengths = points[1:] - points[:-1]
    return torch.repeat_interleave(table[0], lengths, output_size=num_pixels)


def _as_runs(rles: Sequence[RLE] | MaskRuns, class_map: torch.Tensor) -> MaskRuns:
    if isinstance(rles, MaskRuns):
        return rles
    if class_map.dim() != 2:
        raise ValueError(
            f"Expected `class_map` to be (H, W), but got shape {tuple(class_map.shape)}"
        )
    return rles_to_runs(rles, size=tuple(class_map.shape), device=class_map.device)


def vote_and_paint_rles(
    rles: Sequence[RLE] | MaskRuns, class_map: torch.Tensor, num_classes: int | None = None
) -> tuple[VoteResult, torch.Tensor]:
    """SSA's close-set step for masks given as COCO RLEs: votes, then the painted map.

    Args:
        rles: N COCO RLEs of the class map's size, or their :class:`MaskRuns`.
        class_map: (H, W) integer class ids of the semantic branch.
        num_classes: C; defaults to ``class_map.max() + 1``.

    Returns:
        ``(vote, painted)``: the vote (as :func:`vote_rle_classes`) and the (H, W) class map
        with every mask painted with its label, largest first.
    """
    runs = _as_runs(rles, class_map)
    vote = vote_rle_classes(runs, class_map, num_classes)
    painted = paint_runs(class_map, runs, vote.labels, painting_order(vote.areas))
    return vote, painted


def dense_masks_to_runs(masks: torch.Tensor) -> MaskRuns:
    """The foreground runs of dense masks, read in row-major order.

    Row-major runs of a mask are the column-major (COCO) runs of its transpose, so the result
    describes the (N, W, H) transposed masks: vote against ``class_map.t()`` and transpose the
    painted map back (as :func:`vote_and_paint_masks` does). Reading rows avoids copying the
    masks into column-major order. Past one pass over the masks to find their boxes, only each
    mask's box is read, so the work scales with the boxes' areas. One small step per mask: meant
    for the CPU (on a GPU, :mod:`fiftyone_ssa.core.voting` works on the dense masks).

    Args:
        masks: (N, H, W) bool (or integers, nonzero = foreground).

    Returns:
        The maximal runs of the transposed masks (``height`` = W, ``width`` = H), by mask, then
        by start.
    """
    if masks.dim() != 3:
        raise ValueError(f"Expected `masks` to be (N, H, W), but got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    device = masks.device
    starts, ends, index = [], [], []
    for i, (x0, y0, x1, y1) in enumerate(mask_boxes_xyxy(masks).tolist()):
        if x1 < 0:
            continue  # empty mask
        crop = (masks[i, y0 : y1 + 1, x0 : x1 + 1] != 0).to(torch.uint8)
        edges = torch.diff(crop, dim=1, prepend=crop[:, :1] * 0, append=crop[:, :1] * 0)
        rows, first = (edges == 1).nonzero(as_tuple=True)  # rises and falls alternate per row
        last = (edges == 255).nonzero(as_tuple=True)[1]
        offset = (rows + y0) * w + x0
        starts.append(offset + first)
        ends.append(offset + last)
        index.append(torch.full_like(first, i))
    if not starts:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return MaskRuns(w, h, n, empty, empty.clone(), empty.clone())
    starts, ends, index = torch.cat(starts), torch.cat(ends), torch.cat(index)
    # A run reaching the right edge continues on the next row when that starts at column 0.
    join = (index[1:] == index[:-1]) & (starts[1:] == ends[:-1])
    first_of_run = torch.cat([torch.ones(1, dtype=torch.bool, device=device), ~join])
    last_of_run = torch.cat([~join, torch.ones(1, dtype=torch.bool, device=device)])
    merged_starts = starts[first_of_run]
    return MaskRuns(w, h, n, merged_starts, ends[last_of_run] - merged_starts, index[first_of_run])


def vote_and_paint_masks(
    masks: torch.Tensor, class_map: torch.Tensor, num_classes: int | None = None
) -> tuple[VoteResult, torch.Tensor]:
    """SSA's close-set step for dense masks through their runs (faster than dense on the CPU).

    Args:
        masks: (N, H, W) bool.
        class_map: (H, W) integer class ids.
        num_classes: C; defaults to ``class_map.max() + 1``.

    Returns:
        ``(vote, painted)``, equal to ``core.voting``'s dense results.
    """
    if class_map.dim() != 2 or tuple(masks.shape[1:]) != tuple(class_map.shape):
        raise ValueError(
            f"Expected masks (N, H, W) and a class map (H, W) of the same size, but got "
            f"{tuple(masks.shape)} and {tuple(class_map.shape)}"
        )
    vote, painted_t = vote_and_paint_rles(dense_masks_to_runs(masks), class_map.t(), num_classes)
    return vote, painted_t.t().contiguous()
