"""Bilinear upsampling of class scores to full resolution, then argmax, in bounded memory.

``F.interpolate(scores, size, mode="bilinear")`` followed by ``argmax`` needs a (C, H, W) float
tensor: 2 GB for ADE20K's 150 classes at SA-1B size, 29 GB at 8000x6000. Bilinear
interpolation is separable, ``out = Wy @ scores @ Wx^T``, so the same values can be produced a
strip of rows at a time with two small matrix products and reduced to class ids immediately.
"""

from __future__ import annotations

import torch

# Upper bound on floats in one (C, rows, W) strip of upsampled scores (256 MB in float32).
_MAX_STRIP_ELEMENTS = 1 << 26


def bilinear_weights(in_size: int, out_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (out_size, in_size) matrix of PyTorch's 1-D bilinear interpolation.

    Matches ``F.interpolate(..., mode="bilinear", align_corners=False, antialias=False)``:
    source = (dst + 0.5) * in / out - 0.5, clamped at 0.

    Args:
        in_size: source length.
        out_size: destination length.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (out_size, in_size) interpolation weights; each row sums to 1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"Expected sizes >= 1, but got in_size={in_size}, out_size={out_size}")
    scale = in_size / out_size
    dst = torch.arange(out_size, device=device, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (src - lo).to(dtype)
    weights = torch.zeros(out_size, in_size, device=device, dtype=dtype)
    rows = torch.arange(out_size, device=device)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids of bilinearly upsampled class scores, computed strip by strip.

    Args:
        scores: (C, h, w) float class scores (logits or probabilities).
        size: (H, W) output size.

    Returns:
        (H, W) int64 class ids on the scores' device, equal to
        ``F.interpolate(scores[None], size, mode="bilinear").argmax(1)[0]`` up to float
        rounding at exact ties.
    """
    if scores.dim() != 3:
        raise ValueError(f"Expected `scores` to be (C, h, w), but got shape {tuple(scores.shape)}")
    height, width = int(size[0]), int(size[1])
    num_classes, h, w = scores.shape
    dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    scores = scores.to(dtype)
    wy = bilinear_weights(h, height, scores.device, dtype)
    wx = bilinear_weights(w, width, scores.device, dtype)
    # Interpolate along x once: (C, h, W); the strip loop then only mixes rows.
    along_x = torch.matmul(scores, wx.T)
    out = torch.empty((height, width), dtype=torch.int64, device=scores.device)
    rows_per_strip = max(1, _MAX_STRIP_ELEMENTS // max(1, num_classes * width))
    for top in range(0, height, rows_per_strip):
        strip = torch.einsum("rh,chw->crw", wy[top : top + rows_per_strip], along_x)
        out[top : top + rows_per_strip] = strip.argmax(dim=0)
    return out
