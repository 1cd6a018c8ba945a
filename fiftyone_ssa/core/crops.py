"""Crops around masks: boxes scaled about their centre, and crop-and-resize of images and masks.

SSA-engine looks at every mask through crops of the image around the mask's box, enlarged about
the box centre (1.2x for CLIP, 1.6x for BLIP and CLIPSeg) and clipped to the image. Boxes here are
pixel boxes; a mask's box covers its pixels: ``[x, y, w, h]`` with ``w = x_max - x_min + 1``.

Everything is pure torch and stays on the device of its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MODES = ("nearest", "bilinear", "bicubic")


def mask_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight inclusive pixel boxes of masks.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) int64 ``[x0, y0, x1, y1]`` (inclusive); an empty mask gets ``[0, 0, -1, -1]``.
    """
    if masks.dim() != 3:
        raise ValueError(f"Expected `masks` to be (N, H, W), but got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    if h == 0 or w == 0:  # nothing to reduce over: every mask is empty
        return torch.tensor([[0, 0, -1, -1]] * n, dtype=torch.int64, device=masks.device)
    # A max over bytes is several times faster than any() over bools on CPUs.
    as_bytes = (
        masks.view(torch.uint8) if masks.dtype == torch.bool else (masks != 0).view(torch.uint8)
    )
    cols = as_bytes.amax(dim=1) > 0  # (N, W)
    rows = as_bytes.amax(dim=2) > 0  # (N, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    empty = x1 < 0
    x0[empty] = 0
    y0[empty] = 0
    return torch.stack([x0, y0, x1, y1], dim=1)


def mask_boxes_xywh(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel boxes of masks.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32 ``[x, y, w, h]``; an empty mask gets ``[0, 0, 0, 0]``.
    """
    x0, y0, x1, y1 = mask_boxes_xyxy(masks).unbind(dim=1)
    return torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1).float()


def scale_boxes(boxes: torch.Tensor, factor: float, image_size: tuple[int, int]) -> torch.Tensor:
    """Scales ``[x, y, w, h]`` boxes about their centres and clips them to the image.

    The scaled box spans ``[cx - factor * w / 2, cx + factor * w / 2)`` (likewise in y), rounded
    outwards to whole pixels, then clipped to the image; every result holds at least one pixel.

    Args:
        boxes: (N, 4) ``[x, y, w, h]`` in pixels.
        factor: the scale, > 0 (1.0 keeps the box).
        image_size: (H, W) of the image.

    Returns:
        (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive: the crop is
        ``image[..., y0:y1, x0:x1]``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"Expected `boxes` to be (N, 4), but got shape {tuple(boxes.shape)}")
    if not factor > 0:
        raise ValueError(f"Expected `factor` to be > 0, but got {factor}")
    height, width = int(image_size[0]), int(image_size[1])
    if height < 1 or width < 1:
        raise ValueError(f"Expected a non-empty `image_size`, but got {image_size}")
    boxes = boxes.double()
    cx = boxes[:, 0] + boxes[:, 2] / 2
    cy = boxes[:, 1] + boxes[:, 3] / 2
    half_w = boxes[:, 2] * factor / 2
    half_h = boxes[:, 3] * factor / 2
    # A small tolerance keeps exact halves from rounding outwards by float noise.
    eps = 1e-6
    x0 = torch.floor(cx - half_w + eps).long().clamp(0, width - 1)
    y0 = torch.floor(cy - half_h + eps).long().clamp(0, height - 1)
    x1 = torch.ceil(cx + half_w - eps).long().clamp(max=width)
    y1 = torch.ceil(cy + half_h - eps).long().clamp(max=height)
    x1 = torch.maximum(x1, x0 + 1)
    y1 = torch.maximum(y1, y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def centre_square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """The centred square of side ``min(w, h)`` inside each ``[x0, y0, x1, y1)`` box.

    Cropping that square and resizing it to S x S is what CLIP's preprocessing (resize the
    shorter side to S, then centre-crop S x S) does to the box's crop, up to rounding.

    Args:
        boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive.

    Returns:
        (N, 4) int64 ``[x0, y0, x1, y1]``.
    """
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.minimum(w, h)
    x0 = boxes[:, 0] + (w - side) // 2
    y0 = boxes[:, 1] + (h - side) // 2
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def _check_crop_args(image: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"Expected `boxes` to be (N, 4), but got shape {tuple(boxes.shape)}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"Expected `size` to be a positive (h, w), but got {size}")
    if boxes.numel():
        height, width = image.shape[-2:]
        bad = (
            (boxes[:, 0] < 0)
            | (boxes[:, 1] < 0)
            | (boxes[:, 2] > width)
            | (boxes[:, 3] > height)
            | (boxes[:, 2] <= boxes[:, 0])
            | (boxes[:, 3] <= boxes[:, 1])
        )
        if bool(bad.any()):
            raise ValueError(
                f"Expected non-empty `boxes` inside the {width}x{height} image, but got "
                f"{boxes[bad][0].tolist()}"
            )


def crop_resize_images(
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    mode: str = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """Crops an image by boxes and resizes every crop to one size.

    One ``interpolate`` per crop (crops differ in size), antialiased when shrinking as image
    processors do; bicubic overshoot is clamped to the input's range.

    Args:
        image: (C, H, W) image, uint8 or float.
        boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive, inside the image.
        size: (h, w) of the output crops.
        mode: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        antialias: low-pass filter when shrinking (bilinear and bicubic only).

    Returns:
        (N, C, h, w) float32 on the image's device, in the image's value range.
    """
    if image.dim() != 3:
        raise ValueError(f"Expected `image` to be (C, H, W), but got shape {tuple(image.shape)}")
    if mode not in _MODES:
        raise ValueError(f"Expected `mode` to be one of {_MODES}, but got {mode!r}")
    _check_crop_args(image, boxes, size)
    out = torch.empty((boxes.shape[0], image.shape[0], *size), device=image.device)
    if boxes.shape[0] == 0:
        return out
    source = image.float()
    low, high = (0.0, 255.0) if image.dtype == torch.uint8 else (None, None)
    options = {} if mode == "nearest" else {"antialias": antialias, "align_corners": False}
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        crop = source[None, :, y0:y1, x0:x1]
        out[i] = F.interpolate(crop, size=tuple(size), mode=mode, **options)[0]
    if mode == "bicubic":
        if low is None:
            low, high = float(source.min()), float(source.max())
        out.clamp_(low, high)
    return out


def _check_mask_crop_args(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> None:
    if masks.dim() != 3:
        raise ValueError(f"Expected `masks` to be (N, H, W), but got shape {tuple(masks.shape)}")
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"Expected one box per mask, but got {boxes.shape[0]} boxes for {masks.shape[0]} masks"
        )
    _check_crop_args(masks, boxes, size)


def crop_resize_masks(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Crops each mask by its own box and resizes it (nearest, pixel centres), all at once.

    Output pixel (i, j) of crop n reads mask pixel ``(y0 + floor((i + 0.5) * h_n / h),
    x0 + floor((j + 0.5) * w_n / w))`` (``nearest-exact``), one gather for all masks.

    Args:
        masks: (N, H, W) bool.
        boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive, one per mask.
        size: (h, w) of the output.

    Returns:
        (N, h, w) bool.
    """
    _check_mask_crop_args(masks, boxes, size)
    out_h, out_w = int(size[0]), int(size[1])
    boxes = boxes.to(masks.device)
    rows = (torch.arange(out_h, device=masks.device, dtype=torch.float64) + 0.5) / out_h
    cols = (torch.arange(out_w, device=masks.device, dtype=torch.float64) + 0.5) / out_w
    heights = (boxes[:, 3] - boxes[:, 1]).double()
    widths = (boxes[:, 2] - boxes[:, 0]).double()
    ys = boxes[:, 1, None] + torch.floor(rows[None] * heights[:, None]).long()  # (N, h)
    xs = boxes[:, 0, None] + torch.floor(cols[None] * widths[:, None]).long()  # (N, w)
    ys = torch.minimum(ys, boxes[:, 3, None] - 1)
    xs = torch.minimum(xs, boxes[:, 2, None] - 1)
    index = torch.arange(masks.shape[0], device=masks.device)[:, None, None]
    return masks[index, ys[:, :, None], xs[:, None, :]]


def crop_mask_coverage(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Which output cells of each resized crop hold at least one mask pixel.

    The fallback for masks too thin for :func:`crop_resize_masks` to sample any pixel of;
    one adaptive max-pool per mask.

    Args:
        masks: (N, H, W) bool.
        boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive, one per mask.
        size: (h, w) of the output.

    Returns:
        (N, h, w) bool.
    """
    _check_mask_crop_args(masks, boxes, size)
    out = torch.zeros((masks.shape[0], *size), dtype=torch.bool, device=masks.device)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        crop = masks[i, y0:y1, x0:x1].float()[None, None]
        if crop.shape[-2] < size[0] or crop.shape[-1] < size[1]:
            crop = F.interpolate(crop, size=tuple(size), mode="nearest-exact")
        out[i] = F.adaptive_max_pool2d(crop, tuple(size))[0, 0] > 0
    return out


@dataclass(frozen=True)
class CropTransform:
    """How a model wants its crops: size, resampling, value scale and normalisation.

    Attributes:
        size: (h, w) the model's input.
        mode: ``"bilinear"`` or ``"bicubic"`` (or ``"nearest"``).
        mean: per-channel mean, in [0, 1] units.
        std: per-channel standard deviation, in [0, 1] units.
        centre_square: crop the centred square of each box first (CLIP's resize + centre crop).
    """

    size: tuple[int, int]
    mode: str = "bicubic"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    centre_square: bool = False

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs of an image's crops.

        Args:
            image: (3, H, W) uint8 RGB.
            boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive.

        Returns:
            (N, 3, h, w) float32 on the image's device.
        """
        if self.centre_square:
            boxes = centre_square_boxes(boxes)
        crops = crop_resize_images(image, boxes, self.size, self.mode)
        mean = torch.tensor(self.mean, device=crops.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=crops.device).view(1, -1, 1, 1) * 255.0
        return (crops - mean) / std

    def batches(
        self,
        images: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        batch_size: int,
    ) -> Iterator[torch.Tensor]:
        """The crops of all boxes of all images, in order, ``batch_size`` at a time.

        Args:
            images: B tensors (3, H_i, W_i) uint8.
            boxes: B tensors (N_i, 4) int64, the boxes of image i.
            batch_size: crops per yielded batch (the last may hold fewer).

        Yields:
            (<= batch_size, 3, h, w) float32 normalised crops.
        """
        for image_index, box_slice in chunk_boxes(boxes, batch_size):
            yield torch.cat([self(images[i], boxes[i][s]) for i, s in zip(image_index, box_slice)])


def chunk_boxes(
    boxes: Sequence[torch.Tensor], batch_size: int
) -> Iterator[tuple[list[int], list[slice]]]:
    """Splits the boxes of several images, in order, into chunks of ``batch_size`` boxes.

    Args:
        boxes: B tensors (N_i, 4).
        batch_size: boxes per chunk, >= 1.

    Yields:
        ``(image indices, slices)``: the chunk is ``boxes[i][s]`` for each pair, in order.
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
    images: list[int] = []
    slices: list[slice] = []
    filled = 0
    for i, image_boxes in enumerate(boxes):
        start, n = 0, int(image_boxes.shape[0])
        while start < n:
            take = min(batch_size - filled, n - start)
            images.append(i)
            slices.append(slice(start, start + take))
            filled += take
            start += take
            if filled == batch_size:
                yield images, slices
                images, slices, filled = [], [], 0
    if filled:
        yield images, slices
