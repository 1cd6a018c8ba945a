"""Conversions between FiftyOne labels and the tensors the core works on."""

from __future__ import annotations

import os
from collections.abc import Sequence

import fiftyone as fo
import numpy as np
import torch
from PIL import Image

from fiftyone_ssa.core.crops import mask_boxes_xyxy
from fiftyone_ssa.core.mask_set import MaskSet


def segmentation_to_tensor(label: fo.Segmentation, device: torch.device) -> torch.Tensor:
    """The class-id map of a Segmentation (``mask`` or ``mask_path``).

    Returns:
        (H, W) int64 on ``device``.

    Raises:
        ValueError: the label has no mask, or an RGB mask.
    """
    mask = label.get_mask() if hasattr(label, "get_mask") else label.mask
    if mask is None:
        raise ValueError("the Segmentation has neither a mask nor a readable mask_path")
    mask = np.asarray(mask)
    if mask.ndim == 3:
        raise ValueError("RGB segmentation masks are not supported; use integer class ids")
    return torch.from_numpy(mask.astype(np.int64)).to(device)


def detection_full_mask(det: fo.Detection, width: int, height: int) -> np.ndarray:
    """The image-size mask of a Detection: its mask pasted into its box (a filled box if none).

    The box is rounded to the nearest pixel (FiftyOne's ``to_segmentation`` truncates, which
    shifts a box by one pixel when its relative coordinates are not exact binary fractions, and
    resizes masks bilinearly); a mask whose shape differs from the box is resized with nearest
    neighbours; parts outside the image are dropped.

    Args:
        det: the Detection (``mask`` or ``mask_path``).
        width: image width.
        height: image height.

    Returns:
        (height, width) bool.

    Raises:
        OSError: the detection's ``mask_path`` cannot be read.
    """
    full = np.zeros((height, width), dtype=bool)
    x, y, w, h = det.bounding_box or (0.0, 0.0, 0.0, 0.0)
    x0, y0 = round(x * width), round(y * height)
    x1, y1 = round((x + w) * width), round((y + h) * height)
    if x1 <= x0 or y1 <= y0:
        return full
    mask = det.get_mask()
    if mask is None:
        patch = np.ones((y1 - y0, x1 - x0), dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        patch = mask.astype(bool)
        if patch.shape != (y1 - y0, x1 - x0):
            if patch.size == 0:
                return full
            rows = (np.arange(y1 - y0) * 2 + 1) * patch.shape[0] // (2 * (y1 - y0))
            cols = (np.arange(x1 - x0) * 2 + 1) * patch.shape[1] // (2 * (x1 - x0))
            patch = patch[rows][:, cols]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        full[cy0:cy1, cx0:cx1] = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return full


def detections_to_mask_set(
    label: fo.Detections | None, size: tuple[int, int], device: torch.device
) -> MaskSet:
    """Full-image masks of instance Detections (see :func:`detection_full_mask`).

    Detections without a mask are skipped.

    Args:
        label: the Detections (None counts as empty).
        size: (H, W) of the image.
        device: where the masks go.

    Returns:
        The masks (N, H, W) bool with the detections' ``predicted_iou`` and
        ``stability_score`` attributes (NaN where absent).

    Raises:
        OSError: a ``mask_path`` cannot be read.
    """
    height, width = size
    masks, ious, stabilities = [], [], []
    for det in label.detections if label is not None else []:
        if det.mask is None and det.mask_path is None:
            continue
        masks.append(detection_full_mask(det, width, height))
        ious.append(_float_attr(det, "predicted_iou"))
        stabilities.append(_float_attr(det, "stability_score"))
    if not masks:
        return MaskSet.from_masks(torch.zeros((0, height, width), dtype=torch.bool, device=device))
    return MaskSet(
        masks=torch.from_numpy(np.stack(masks)).to(device),
        predicted_iou=torch.tensor(ious, dtype=torch.float32, device=device),
        stability_score=torch.tensor(stabilities, dtype=torch.float32, device=device),
    )


# Attributes that describe a mask itself (SA-1B's annotation id, prompt point, crop box,
# original box and RLE, the mask generator's scores at full precision). A run reading its masks
# from a Detections field copies them onto the detections it writes for the same masks, so that
# exporting its output to SA-1B keeps the original annotations with the new classes.
CARRIED_MASK_ATTRIBUTES = (
    "sa1b_id",
    "point_coords",
    "crop_box",
    "sa1b_bbox",
    "rle_counts",
    "predicted_iou",
    "stability_score",
)


def carried_attributes(label: fo.Detections | None) -> list[dict]:
    """The :data:`CARRIED_MASK_ATTRIBUTES` of each detection with a mask, in the order of
    :func:`detections_to_mask_set`'s masks (absent or None attributes left out)."""
    carried = []
    for det in label.detections if label is not None else []:
        if det.mask is None and det.mask_path is None:
            continue
        values = {
            name: det.get_field(name) for name in CARRIED_MASK_ATTRIBUTES if det.has_field(name)
        }
        carried.append({k: v for k, v in values.items() if v is not None})
    return carried


def _float_attr(det: fo.Detection, name: str) -> float:
    value = det.get_field(name) if det.has_field(name) else None
    return float(value) if value is not None else float("nan")


def float_or_none(value: float) -> float | None:
    """A score as FiftyOne stores it: a Python float, or None for NaN (a missing value)."""
    return None if np.isnan(value) else float(value)


# The largest class id a Segmentation mask holds (FiftyOne stores uint8 or uint16 masks).
MAX_CLASS_ID = 65535


def class_map_to_numpy(class_map: torch.Tensor) -> np.ndarray:
    """A class-id map as the smallest unsigned dtype FiftyOne stores: uint8 or uint16."""
    top = int(class_map.max()) if class_map.numel() else 0
    if top > MAX_CLASS_ID:
        raise ValueError(f"Expected class ids <= {MAX_CLASS_ID}, but got {top}")
    dtype = np.uint8 if top <= 255 else np.uint16
    return class_map.cpu().numpy().astype(dtype)


def build_detections(
    masks: torch.Tensor,
    labels: Sequence[str],
    attributes: Sequence[dict],
    mask_dir: str | None = None,
    carried: Sequence[dict] | None = None,
) -> fo.Detections:
    """Detections with masks cropped to their boxes, one per non-empty mask.

    Args:
        masks: (N, H, W) bool, any device.
        labels: N class names.
        attributes: N dicts of extra attributes (confidence goes to the ``confidence`` field).
        mask_dir: when given, masks are written there as PNGs and referenced by ``mask_path``
            (keeps large sample documents small).
        carried: N dicts of the masks' source attributes (:func:`carried_attributes`), kept
            over ``attributes``; None when the masks have no source detections.
    """
    n, height, width = masks.shape
    boxes = mask_boxes_xyxy(masks).cpu().tolist()
    detections = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x1 < 0:
            continue
        crop = masks[i, y0 : y1 + 1, x0 : x1 + 1].cpu().numpy()
        attrs = {**attributes[i], **(carried[i] if carried is not None else {})}
        # The mask goes in through the constructor: assigning it afterwards makes mongoengine
        # compare the array with the old value, element by element.
        if mask_dir is None:
            attrs["mask"] = crop
        else:
            attrs["mask_path"] = write_mask_png(crop, os.path.join(mask_dir, f"{i:05d}.png"))
        det = fo.Detection(
            label=labels[i],
            bounding_box=[x0 / width, y0 / height, (x1 - x0 + 1) / width, (y1 - y0 + 1) / height],
            confidence=attrs.pop("confidence", None),
            **attrs,
        )
        detections.append(det)
    return fo.Detections(detections=detections)


def write_mask_png(mask: np.ndarray, path: str) -> str:
    """Writes a bool or integer mask as a PNG (bool as 0/255) and returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask
    Image.fromarray(array).save(path)
    return path
