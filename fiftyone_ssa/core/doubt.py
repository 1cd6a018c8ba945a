"""Doubt per mask: the evidence that a mask's class may be wrong, and one ``review_score``.

Every signal is turned into a *doubt* in [0, 1] (0: the evidence fully supports the class,
1: it contradicts it); ``review_score`` is the weighted mean of the doubts a mask has (a
signal that is missing, NaN, drops out and the others' weights are renormalised). Higher
means more likely wrong. README, "Reviewing labels", explains the choice of signals and weights.

SSA close-set (a mask's class is voted from the branch's class map):

============================  =====================================================  ======
signal                        doubt                                                  weight
============================  =====================================================  ======
``vote_margin``               1 - (share of the winning class - share of the          4
                              runner-up): how close the vote was to another class
``branch_disagreement``       share of the pixels the mask paints in SSA's output      2
                              (where it is the topmost mask) whose branch class
                              differs from the mask's class
``predicted_iou``             1 - SAM's predicted IoU                                  1
``stability_score``           1 - SAM's stability score                                1
============================  =====================================================  ======

SSA-engine (a mask's name is CLIPSeg's pick among CLIP's top-k):

============================  =====================================================  ======
``clip_margin``               1 - max(0, CLIP probability of the chosen name -         2
                              the best other candidate's)
``clipseg_share``             1 - the share of the mask's pixels CLIPSeg gives the     2
                              chosen name (the detection's ``confidence``)
``clip_agrees``               0 when CLIPSeg's pick is CLIP's top-1, else 1            2
``predicted_iou``             1 - SAM's predicted IoU                                  1
``stability_score``           1 - SAM's stability score                                1
============================  =====================================================  ======
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# Weights of each signal's doubt in ``review_score``.
SSA_WEIGHTS = {
    "vote_margin": 4.0,
    "branch_disagreement": 2.0,
    "predicted_iou": 1.0,
    "stability_score": 1.0,
}
ENGINE_WEIGHTS = {
    "clip_margin": 2.0,
    "clipseg_share": 2.0,
    "clip_agrees": 2.0,
    "predicted_iou": 1.0,
    "stability_score": 1.0,
}


def vote_margins(votes: torch.Tensor) -> torch.Tensor:
    """Vote share of the winning class minus that of the runner-up, per mask.

    Args:
        votes: (N, C) int64, pixels of each mask per class (see ``core.voting.count_votes``).

    Returns:
        (N,) float32 in [0, 1]; the winner's share when no other class has a vote, 0 for an
        empty mask.
    """
    if votes.dim() != 2:
        raise ValueError(f"Expected `votes` to be (N, C), but got shape {tuple(votes.shape)}")
    n, c = votes.shape
    if n == 0 or c == 0:
        return torch.zeros(n, dtype=torch.float32, device=votes.device)
    top = torch.topk(votes, min(2, c), dim=1).values.float()
    second = top[:, 1] if c > 1 else torch.zeros_like(top[:, 0])
    areas = votes.sum(dim=1).float()
    return torch.where(areas > 0, (top[:, 0] - second) / areas.clamp(min=1), 0.0)


def branch_disagreement(
    owner: torch.Tensor, class_map: torch.Tensor, painted: torch.Tensor, num_masks: int
) -> torch.Tensor:
    """Per mask, the share of the pixels it paints whose branch class is another class.

    A mask paints the pixels where it is the topmost mask (``owner``); those are the pixels
    its class decides in SSA's output. Its vote counts all its pixels, so a large mask whose
    majority lies under smaller masks can paint its class over pixels the branch gives
    another class: this measures exactly that. For a mask no other mask overlaps it equals
    1 - vote share. The three maps may be in any layout (e.g. all transposed) as long as they
    share it.

    Args:
        owner: (H, W) int64, 1 + the index of the topmost mask at each pixel, 0 where none.
        class_map: (H, W) integer class ids of the semantic branch.
        painted: (H, W) SSA's output: each mask's class where it is the topmost mask, the
            branch's class elsewhere.
        num_masks: N.

    Returns:
        (N,) float32 in [0, 1]; NaN for a mask that paints no pixel (fully under smaller ones).
    """
    if not owner.shape == class_map.shape == painted.shape or owner.dim() != 2:
        raise ValueError(
            f"Expected `owner`, `class_map` and `painted` of one (H, W) shape, but got "
            f"{tuple(owner.shape)}, {tuple(class_map.shape)} and {tuple(painted.shape)}"
        )
    n = num_masks
    flat_owner = owner.reshape(-1)
    if flat_owner.numel() and (int(flat_owner.min()) < 0 or int(flat_owner.max()) > n):
        raise ValueError(
            f"Expected `owner` values in [0, {n}], but got [{int(flat_owner.min())}, "
            f"{int(flat_owner.max())}]"
        )
    # Where no mask is, the output keeps the branch's class: those pixels never differ.
    differs = (painted.reshape(-1) != class_map.reshape(-1)).long()
    # One count of (owner, differs) pairs: column 0 agrees, column 1 differs.
    counts = torch.bincount(flat_owner.long() * 2 + differs, minlength=2 * (n + 1))
    counts = counts.view(n + 1, 2)[1:]
    painted_pixels = counts.sum(dim=1)
    share = counts[:, 1].float() / painted_pixels.clamp(min=1).float()
    return torch.where(painted_pixels > 0, share, float("nan")).float()


def clip_margins(
    chosen: Sequence[str], proposals: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's probability of each mask's chosen name and its margin to the best other name.

    Args:
        chosen: N chosen names (CLIPSeg's pick among the proposals).
        proposals: N lists of CLIP's ranked names, best first; each must include the runner-up
            when the mask has more than one candidate (rank with k >= 2).
        scores: N lists of their CLIP probabilities.

    Returns:
        ``(probability, margin)``: (N,) float32 each; the margin is in [-1, 1], negative when
        CLIP prefers another name; NaN for a name not among the proposals.
    """
    probability, margin = [], []
    for name, names, probs in zip(chosen, proposals, scores, strict=True):
        if name not in names:
            probability.append(float("nan"))
            margin.append(float("nan"))
            continue
        i = list(names).index(name)
        others = [p for j, p in enumerate(probs) if j != i]
        probability.append(float(probs[i]))
        margin.append(float(probs[i]) - max(others, default=0.0))
    return torch.tensor(probability, dtype=torch.float32), torch.tensor(margin, dtype=torch.float32)


def ssa_doubts(
    margin: torch.Tensor,
    disagreement: torch.Tensor,
    predicted_iou: torch.Tensor,
    stability_score: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The doubts of SSA close-set's signals (see the module's table), each (N,) float32.

    Args:
        margin: (N,) vote margins (:func:`vote_margins`).
        disagreement: (N,) branch disagreement (:func:`branch_disagreement`), NaN allowed.
        predicted_iou: (N,) SAM's predicted IoU, NaN where unknown.
        stability_score: (N,) SAM's stability score, NaN where unknown.
    """
    return {
        "vote_margin": 1.0 - margin.float().clamp(0.0, 1.0),
        "branch_disagreement": disagreement.float().clamp(0.0, 1.0),
        "predicted_iou": 1.0 - predicted_iou.float().clamp(0.0, 1.0),
        "stability_score": 1.0 - stability_score.float().clamp(0.0, 1.0),
    }


def engine_doubts(
    clip_margin: torch.Tensor,
    clipseg_share: torch.Tensor,
    clip_agrees: torch.Tensor,
    predicted_iou: torch.Tensor,
    stability_score: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The doubts of SSA-engine's signals (see the module's table), each (N,) float32.

    Args:
        clip_margin: (N,) in [-1, 1] (:func:`clip_margins`), NaN where unknown.
        clipseg_share: (N,) CLIPSeg's pixel share of the chosen name.
        clip_agrees: (N,) bool, CLIPSeg's pick is CLIP's top-1.
        predicted_iou: (N,) SAM's predicted IoU, NaN where unknown.
        stability_score: (N,) SAM's stability score, NaN where unknown.
    """
    return {
        "clip_margin": 1.0 - clip_margin.float().clamp(0.0, 1.0),
        "clipseg_share": 1.0 - clipseg_share.float().clamp(0.0, 1.0),
        "clip_agrees": (~clip_agrees.bool()).float(),
        "predicted_iou": 1.0 - predicted_iou.float().clamp(0.0, 1.0),
        "stability_score": 1.0 - stability_score.float().clamp(0.0, 1.0),
    }


def review_score(doubts: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The weighted mean of each mask's available doubts: higher = more likely wrong.

    Args:
        doubts: signal name -> (N,) doubts in [0, 1], NaN where the mask lacks the signal.
        weights: signal name -> weight > 0 (:data:`SSA_WEIGHTS`, :data:`ENGINE_WEIGHTS`);
            every doubt needs one.

    Returns:
        (N,) float32 in [0, 1]; NaN for a mask with no signal at all.
    """
    missing = sorted(set(doubts) - set(weights))
    if missing:
        raise ValueError(f"Expected a weight for every doubt, but got none for {missing}")
    if not doubts:
        raise ValueError("Expected at least one doubt, but got none")
    stacked = torch.stack([doubts[name].float() for name in doubts])  # (S, N)
    w = torch.tensor([float(weights[name]) for name in doubts], device=stacked.device)
    if bool((w <= 0).any()):
        raise ValueError(f"Expected weights > 0, but got {dict(weights)}")
    present = ~torch.isnan(stacked)
    w = w[:, None] * present
    total = w.sum(dim=0)
    score = (torch.nan_to_num(stacked) * w).sum(dim=0) / total.clamp(min=1e-12)
    return torch.where(total > 0, score.clamp(0.0, 1.0), float("nan"))
