"""segment-anything's small-region post-processing, on each mask's bounding box.

``SamAutomaticMaskGenerator.postprocess_small_regions`` decodes every mask to the full image, runs
OpenCV's connected components on it twice (holes, then islands), and re-runs NMS preferring the
masks that did not change. Here the same result comes from the masks' padded bounding boxes
only: one transfer of the box crops to the host, connected components in a thread pool, one
transfer of the edited crops back.

Working on the box is exact: islands (components of the mask) lie inside it; the one background
component that touches the padded border continues outside it, and its size outside is computed
in closed form. The rare cases where the box cannot decide (that background component is itself
smaller than the area threshold; a tie between the largest of islands that are all small) fall
back to the full image.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def padded_box(box: list[int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (y0, x0, y1, x1) crop (end exclusive) around an XYXY inclusive box, one pixel wider.

    The top-left corner is rounded down to even coordinates so that OpenCV's 2x2 block scan
    sees the same blocks as on the full image.
    """
    left, top, right, bottom = (int(v) for v in box)
    height, width = image_size
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    return y0 - y0 % 2, x0 - x0 % 2, min(bottom + 2, height), min(right + 2, width)


def remove_small_regions_in_box(
    mask: np.ndarray, area_thresh: float
) -> tuple[tuple[int, int, np.ndarray], bool]:
    """Holes then islands, as ``segment_anything.utils.amg.remove_small_regions`` does them.

    Args:
        mask: (H, W) bool.
        area_thresh: holes smaller than this are filled, islands smaller than this removed (the
            largest island stays when all are small).

    Returns:
        ``((y0, x0, region), changed)``: the edited (h, w) bool region whose top-left pixel is
        (x0, y0) (the mask outside it is unchanged), and whether anything changed.
    """
    rows = np.flatnonzero(mask.any(1))
    if len(rows):
        cols = np.flatnonzero(mask.any(0))
        box = padded_box([cols[0], rows[0], cols[-1], rows[-1]], mask.shape)
        crop = mask[box[0] : box[2], box[1] : box[3]]
        result = remove_small_regions_cropped(crop, box, mask.shape, area_thresh)
        if result is not None:
            return (box[0], box[1], result[0]), result[1]
    region, changed = _full_image(mask, area_thresh)
    return (0, 0, region), changed


def _full_image(mask: np.ndarray, area_thresh: float) -> tuple[np.ndarray, bool]:
    from segment_anything.utils.amg import remove_small_regions

    region, holes_changed = remove_small_regions(mask, area_thresh, mode="holes")
    region, islands_changed = remove_small_regions(region, area_thresh, mode="islands")
    return region, holes_changed or islands_changed


def remove_small_regions_cropped(
    crop: np.ndarray, box: tuple[int, int, int, int], image_size, area_thresh: float
) -> tuple[np.ndarray, bool] | None:
    """Holes then islands on a padded-box crop of a mask (see :func:`padded_box`).

    Args:
        crop: (h, w) bool, the mask inside ``box``; the mask is empty outside it.
        box: (y0, x0, y1, x1) of the crop in the image.
        image_size: (H, W).
        area_thresh: as in :func:`remove_small_regions_in_box`.

    Returns:
        The edited crop and whether it changed, or None when only the full image can decide.
    """
    filled = _fill_small_holes(crop, box, image_size, area_thresh)
    if filled is None:
        return None
    cleaned = _remove_small_islands(filled[0], area_thresh)
    if cleaned is None:
        return None
    return cleaned[0], filled[1] or cleaned[1]


def _outside_parts(box, image_size) -> list[tuple[int, list[str]]]:
    """Connected parts of the image outside ``box``: (pixel count, box sides they touch)."""
    y0, x0, y1, x1 = box
    height, width = image_size
    full_width, full_height = x0 == 0 and x1 == width, y0 == 0 and y1 == height
    if full_width and full_height:
        return []
    if full_width:
        parts = [(width * y0, ["top"]), (width * (height - y1), ["bottom"])]
    elif full_height:
        parts = [(height * x0, ["left"]), (height * (width - x1), ["right"])]
    else:
        padded = {"top": y0 > 0, "bottom": y1 < height, "left": x0 > 0, "right": x1 < width}
        parts = [
            (height * width - (y1 - y0) * (x1 - x0), [side for side, p in padded.items() if p])
        ]
    return [(size, sides) for size, sides in parts if size > 0]


def _fill_small_holes(crop: np.ndarray, box, image_size, area_thresh: float):
    """Holes mode on the padded box; None when the full image must decide."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats((~crop).astype(np.uint8), 8)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    # A padded side is a line of background pixels, so one label each.
    line_label = {
        "top": labels[0, 0],
        "bottom": labels[-1, 0],
        "left": labels[0, 0],
        "right": labels[0, -1],
    }
    reaches_outside = np.zeros(n, dtype=bool)
    for size, sides in _outside_parts(box, image_size):
        for label in {int(line_label[side]) for side in sides}:
            sizes[label] += size
            reaches_outside[label] = True
    small = [label for label in range(1, n) if sizes[label] < area_thresh]
    if not small:
        return crop, False
    if reaches_outside[small].any():
        return None
    return crop | np.isin(labels, small), True


def _remove_small_islands(crop: np.ndarray, area_thresh: float):
    """Islands mode on the padded box; None when the full image must decide."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8), 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = [i + 1 for i, size in enumerate(sizes) if size < area_thresh]
    if not small:
        return crop, False
    small_set = set(small)
    keep = [label for label in range(1, n) if label not in small_set]
    if not keep:  # every island is small: keep the largest (ties: OpenCV's label order)
        if (sizes == sizes.max()).sum() > 1:
            return None
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, keep), True


def _box_of(y0: int, x0: int, region: np.ndarray) -> list[int]:
    """XYXY inclusive box of a region placed at (x0, y0); zeros when empty."""
    rows = np.flatnonzero(region.any(1))
    if not len(rows):
        return [0, 0, 0, 0]
    cols = np.flatnonzero(region.any(0))
    return [x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1])]


def postprocess_small_regions(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    min_area: int,
    nms_thresh: float,
    num_workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """segment-anything's ``postprocess_small_regions`` on a device batch of masks.

    Fills holes and removes islands smaller than ``min_area`` in every mask, then runs box NMS
    with score 1 for unchanged and 0 for changed masks (so unchanged masks win), as
    segment-anything does.

    Args:
        masks: (N, H, W) bool, on any device.
        boxes: (N, 4) int XYXY inclusive boxes of ``masks`` (zeros for empty masks).
        min_area: the area threshold.
        nms_thresh: the box IoU threshold of the NMS.
        num_workers: threads running OpenCV; all CPUs (at most 16) by default.

    Returns:
        masks: (K, H, W) bool, the kept masks, edited, on the input's device.
        boxes: (K, 4) int64 XYXY inclusive boxes of the kept masks.
        keep: (K,) int64 indices of the kept masks into the input, in NMS order.
    """
    from torchvision.ops.boxes import batched_nms

    device = masks.device
    n, height, width = masks.shape
    if n == 0:
        return masks, boxes.long(), torch.zeros(0, dtype=torch.int64, device=device)
    info = torch.cat([boxes.long(), masks.flatten(1).any(1, keepdim=True).long()], 1).cpu()
    crops = [padded_box(row[:4].tolist(), (height, width)) for row in info]
    flat = torch.cat(
        [masks[i, y0:y1, x0:x1].reshape(-1) for i, (y0, x0, y1, x1) in enumerate(crops)]
    ).cpu()  # the one device -> host transfer of mask pixels
    ends = np.cumsum([(y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in crops])
    pieces = np.split(flat.numpy(), ends[:-1])

    def clean(i: int):
        y0, x0, y1, x1 = crops[i]
        if info[i, 4]:
            crop = pieces[i].reshape(y1 - y0, x1 - x0)
            result = remove_small_regions_cropped(crop, crops[i], (height, width), min_area)
            if result is not None:
                region, changed = result
                return (y0, x0, region), changed
        full = masks[i].cpu().numpy()  # empty mask, or the rare undecidable case
        region, changed = _full_image(full, min_area)
        return (0, 0, region), changed

    workers = num_workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(clean, range(n)))

    new_boxes = torch.tensor(
        [
            _box_of(*region) if changed else row[:4].tolist()
            for (region, changed), row in zip(results, info)
        ],
        dtype=torch.int64,
    ).reshape(-1, 4)
    scores = torch.tensor([0.0 if changed else 1.0 for _, changed in results])
    keep = batched_nms(new_boxes.float(), scores, torch.zeros(n), iou_threshold=nms_thresh)

    kept = keep.tolist()
    out = masks[keep.to(device)]
    edited = [(row, results[i][0]) for row, i in enumerate(kept) if results[i][1]]
    if edited:
        uploaded = torch.from_numpy(
            np.concatenate([region.reshape(-1) for _, (_, _, region) in edited])
        ).to(device)
        start = 0
        for row, (y0, x0, region) in edited:
            h, w = region.shape
            out[row, y0 : y0 + h, x0 : x0 + w] = uploaded[start : start + h * w].view(h, w)
            start += h * w
    return out, new_boxes[keep].to(device), keep.to(device)
