"""Synthetic inputs of the voting benchmarks: a blocky class map and ellipse masks as RLEs."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def make_voting_inputs(
    rng: np.random.Generator, height: int, width: int, n_masks: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """A class map of 50x50 blocks and ellipse masks, as pycocotools writes them.

    Returns:
        ``(class_map, masks, rles)``: (H, W) int64, (N, H, W) bool and N compressed COCO RLEs.
    """
    small = rng.integers(0, n_classes, size=(height // 50 + 1, width // 50 + 1))
    class_map = np.kron(small, np.ones((50, 50), dtype=np.int64))[:height, :width]
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((n_masks, height, width), dtype=bool)
    for i in range(n_masks):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry = rng.integers(min(10, height // 4), max(height // 4, 11))
        rx = rng.integers(min(10, width // 4), max(width // 4, 11))
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    return class_map, masks, rles
