"""Benchmark (not timed): does ranking SSA's masks by ``review_score`` find the wrong ones?

Generated scenes with known truth, under SSA's premise (sharp masks, a blurry semantic map):

- truth: a two-band background and ellipses/rectangles of random classes on top;
- the semantic branch's map: argmax of logits = the truth's one-hot, Gaussian-blurred (blurry
  boundaries, small objects swallowed), plus a spatially correlated noise field per class
  (blobs of a wrong class), and for some objects a confused class over the whole object
  (a wrong class no signal of SSA can see);
- the masks, as SAM gives them: one per visible region of the truth, some split in two along a
  random line, some merged with a neighbouring region (under-segmentation; the parts stay as
  masks too, so masks overlap).

Every image goes through SSA's own code (``core.ssa.label_one_image``, ``review_score`` without
SAM's scores: the generated masks have none). A mask is *wrong* when its voted class differs
from its true class (the truth's majority over the mask). Reported: the base error rate (what
random picking finds), and the precision of the 10% of masks with the highest score, for
``review_score`` and for each signal alone.

Usage: ``python -m benchmarks.bench_review_score [--images 150] [--size 240x320] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_ssa.core.ssa import label_one_image

NUM_CLASSES = 10


@dataclass
class Scene:
    """One generated image: the truth, the branch's map and the masks."""

    truth: np.ndarray  # (H, W) int64
    branch: np.ndarray  # (H, W) int64
    masks: np.ndarray  # (N, H, W) bool


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) float blurred per channel (separable, reflect padding)."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def _truth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) int64 instance ids; instance 0 and 1 are the background bands."""
    owner = np.zeros((height, width), dtype=np.int64)
    owner[int(rng.integers(height // 3, 2 * height // 3)) :] = 1
    yy, xx = np.mgrid[:height, :width]
    for k in range(int(rng.integers(6, 14))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry = rng.integers(max(2, height // 40), height // 4)
        rx = rng.integers(max(2, width // 40), width // 4)
        if rng.random() < 0.5:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            shape = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        owner[shape] = k + 2
    return owner


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """One generated scene (see the module's docstring)."""
    owner = _truth(rng, height, width)
    ids = np.unique(owner)
    instance_class = {0: 0, 1: 1}
    for i in ids[ids >= 2]:
        instance_class[int(i)] = int(rng.integers(2, NUM_CLASSES))
    truth = np.vectorize(instance_class.get)(owner).astype(np.int64)
    # The branch: one-hot of the truth, whole objects confused with another class at times.
    seen = truth.copy()
    for i in ids[ids >= 2]:
        if rng.random() < 0.08:
            seen[owner == i] = int(rng.integers(2, NUM_CLASSES))
    one_hot = F.one_hot(torch.from_numpy(seen), NUM_CLASSES).permute(2, 0, 1).float()
    scale = min(height, width)
    logits = _gaussian_blur(one_hot, sigma=scale / 40)
    noise = _gaussian_blur(
        torch.from_numpy(rng.standard_normal((NUM_CLASSES, height, width))).float(),
        sigma=scale / 25,
    )
    noise = noise / noise.std().clamp(min=1e-6)
    branch = (logits + 0.35 * noise).argmax(dim=0).numpy().astype(np.int64)
    # The masks: visible regions of the instances, some split, some merged with a neighbour.
    regions = [owner == i for i in ids]
    masks = []
    yy, xx = np.mgrid[:height, :width]
    for region in regions:
        if region.sum() > 200 and rng.random() < 0.3:
            cy, cx = np.argwhere(region).mean(axis=0)
            angle = rng.uniform(0, math.pi)
            side = (yy - cy) * math.cos(angle) - (xx - cx) * math.sin(angle) > 0
            masks += [region & side, region & ~side]
        else:
            masks.append(region)
    for region in regions:
        if rng.random() < 0.15:
            ring = (
                F.max_pool2d(torch.from_numpy(region)[None, None].float(), 5, stride=1, padding=2)[
                    0, 0
                ].numpy()
                > 0
            )
            neighbours = [r for r in regions if (r & ring & ~region).any()]
            if neighbours:
                other = neighbours[int(rng.integers(0, len(neighbours)))]
                masks.append(region | other)
    masks = np.stack([m for m in masks if m.sum() >= 20])
    return Scene(truth=truth, branch=branch, masks=masks)


def evaluate(images: int, height: int, width: int, seed: int) -> dict:
    """Scores every mask of ``images`` generated scenes; returns the ranking results."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {
        "wrong": [],
        "margin": [],
        "review_score": [],
        "1 - vote share": [],
        "1 - vote margin": [],
        "branch_disagreement": [],
    }
    for _ in range(images):
        scene = make_scene(rng, height, width)
        masks = torch.from_numpy(scene.masks)
        labels = label_one_image(torch.from_numpy(scene.branch), masks, NUM_CLASSES)
        truth_votes = label_one_image(torch.from_numpy(scene.truth), masks, NUM_CLASSES)
        nan = torch.full((masks.shape[0],), float("nan"))
        columns["wrong"] += (labels.labels != truth_votes.labels).tolist()
        columns["margin"] += labels.margin.tolist()
        columns["review_score"] += labels.review_score(nan, nan).tolist()
        columns["1 - vote share"] += (1 - labels.vote.confidence).tolist()
        columns["1 - vote margin"] += (1 - labels.margin).tolist()
        columns["branch_disagreement"] += labels.branch_disagreement.nan_to_num(0.0).tolist()
    wrong = np.array(columns.pop("wrong"), dtype=bool)
    # Wrong masks whose vote was clear (margin > 0.5): the branch itself is wrong there, with
    # confidence; no signal of the vote can rank them first.
    confidently_wrong = int((wrong & (np.array(columns.pop("margin")) > 0.5)).sum())
    top = max(1, math.ceil(0.1 * len(wrong)))
    ranking = {}
    for name, values in columns.items():
        # Ties broken at random so that a constant score scores as random picking.
        keys = np.array(values) + rng.uniform(0, 1e-9, len(values))
        chosen = np.argsort(-keys, kind="stable")[:top]
        precision = float(wrong[chosen].mean())
        recall = float(wrong[chosen].sum() / max(1, wrong.sum()))
        ranking[name] = (precision, recall)
    return {
        "masks": len(wrong),
        "wrong": int(wrong.sum()),
        "confidently_wrong": confidently_wrong,
        "top": top,
        "ranking": ranking,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", default="240x320", help="HxW of the generated images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    result = evaluate(args.images, height, width, args.seed)
    base = result["wrong"] / max(1, result["masks"])
    print(
        f"{args.images} generated scenes {height}x{width}, seed {args.seed}: {result['masks']} "
        f"masks, {result['wrong']} wrong (base error rate {base:.3f}); top 10% = "
        f"{result['top']} masks; {result['confidently_wrong']} of the wrong masks won their "
        "vote by more than half their pixels"
    )
    print("| ranking by | precision of the top 10% | x base rate | recall of the top 10% |")
    print("| --- | --- | --- | --- |")
    print(f"| random (base error rate) | {base:.3f} | 1.0 | 0.100 |")
    for name, (precision, recall) in result["ranking"].items():
        lift = precision / base if base else float("nan")
        print(f"| {name} | {precision:.3f} | {lift:.1f} | {recall:.3f} |")
    return result


if __name__ == "__main__":
    main()
