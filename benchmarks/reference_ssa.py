"""The original SSA's close-set voting, kept as the speed reference (per mask, from RLE).

Follows ``semantic_annotation_pipeline`` of the original repository: every annotation's RLE is
decoded on the CPU with pycocotools, its pixels' classes gathered from the branch's class map,
counted with ``bincount`` and the top-1 class painted, one mask at a time, largest first.
"""

from __future__ import annotations

import torch
from pycocotools import mask as mask_utils


def reference_vote_and_paint(rles: list[dict], class_map: torch.Tensor) -> torch.Tensor:
    """Per-mask voting and painting as the original did.

    Args:
        rles: COCO RLEs of the masks (``size`` and ``counts``).
        class_map: (H, W) int64 class ids, on the device the original ran on.

    Returns:
        (H, W) painted class map.
    """
    out = class_map.clone()
    order = sorted(range(len(rles)), key=lambda i: -int(mask_utils.area(rles[i])))
    for i in order:
        valid = torch.from_numpy(mask_utils.decode(rles[i])).bool().to(class_map.device)
        proposed = class_map[valid]
        if proposed.numel() == 0:
            continue
        top1 = torch.bincount(proposed.flatten()).topk(1).indices
        out[valid] = top1
    return out
