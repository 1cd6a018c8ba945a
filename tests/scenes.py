"""Synthetic scenes with known ground truth: class regions, instances, and a coarse branch."""

from __future__ import annotations

import numpy as np
from PIL import Image

SCENE_CLASSES = {0: "background", 1: "road", 2: "car", 3: "tree", 4: "person", 5: "sign"}


def make_scene(rng: np.random.Generator, height: int = 96, width: int = 128, n_objects: int = 8):
    """A scene of overlapping ellipses and rectangles on a two-region background.

    Returns:
        image (H, W, 3) uint8 RGB, gt (H, W) uint8 class ids, instances (N, H, W) bool
        (the visible part of every region, background regions included).
    """
    gt = np.zeros((height, width), dtype=np.uint8)
    split = int(rng.integers(height // 3, 2 * height // 3))
    gt[split:] = 1  # road below the horizon
    owner = np.where(gt == 1, 1, 0).astype(np.int32)  # instance ids: 0 sky, 1 road
    yy, xx = np.mgrid[:height, :width]
    for k in range(n_objects):
        cls = int(rng.integers(2, len(SCENE_CLASSES)))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(6, height // 3), rng.integers(6, width // 3)
        if rng.random() < 0.5:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            shape = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        gt[shape] = cls
        owner[shape] = k + 2
    instances = np.stack([owner == i for i in np.unique(owner)])
    palette = rng.integers(0, 256, size=(len(SCENE_CLASSES), 3))
    image = palette[gt].astype(np.uint8)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return image, gt, instances


def coarsen(gt: np.ndarray, rng: np.random.Generator, factor: int = 8, noise: float = 0.05):
    """A blurry-boundary prediction: nearest down/up-sampling plus blocks of label noise."""
    h, w = gt.shape
    small = Image.fromarray(gt).resize((max(1, w // factor), max(1, h // factor)), Image.NEAREST)
    coarse = np.asarray(small.resize((w, h), Image.NEAREST)).copy()
    flips = rng.random(coarse.shape) < noise
    coarse[flips] = rng.integers(0, len(SCENE_CLASSES), size=int(flips.sum()))
    return coarse


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """NaN-mean IoU over classes present in either map (a small independent reference)."""
    ious = []
    for c in range(num_classes):
        inter = np.logical_and(pred == c, gt == c).sum()
        union = np.logical_or(pred == c, gt == c).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


MASK_KINDS = ("rect", "ragged", "noise", "empty", "full", "dup")


def masks_of_kinds(rng: np.random.Generator, height: int, width: int, kinds) -> np.ndarray:
    """(N, H, W) bool masks, one per kind: ``rect`` a random rectangle, ``ragged`` one with 40%
    of its pixels dropped, ``noise`` random pixels, ``empty``, ``full`` (the whole image), ``dup``
    a copy of an earlier mask (a rectangle when there is none)."""
    masks = []
    for kind in kinds:
        if kind == "empty":
            masks.append(np.zeros((height, width), bool))
        elif kind == "full":
            masks.append(np.ones((height, width), bool))
        elif kind == "dup" and masks:
            masks.append(masks[int(rng.integers(0, len(masks)))].copy())
        elif kind == "noise":
            masks.append(rng.random((height, width)) < rng.random())
        else:
            y0, x0 = rng.integers(0, height), rng.integers(0, width)
            y1, x1 = rng.integers(y0, height + 1), rng.integers(x0, width + 1)
            mask = np.zeros((height, width), bool)
            mask[y0:y1, x0:x1] = True
            if kind == "ragged":
                mask &= rng.random((height, width)) < 0.6
            masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, height, width), bool)
