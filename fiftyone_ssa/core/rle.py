"""COCO run-length encoding (RLE) of binary masks, compatible with pycocotools.

COCO RLE walks a mask in column-major (Fortran) order and stores alternating run lengths of
zeros and ones, always starting with a (possibly empty) run of zeros. The *uncompressed* form
keeps the runs as a list of integers; the *compressed* form (what SA-1B and pycocotools'
``encode`` write) packs them into an ASCII string: from the fourth run on, each run is stored
as the difference to the run two places before it, and every value is written as a
little-endian sequence of 5-bit groups offset by 48, bit 0x20 flagging a continuation and bit
0x10 of the last group giving the sign.

Strings produced here are byte-identical to pycocotools' (``counts.decode("ascii")``). Pure
numpy/torch: pycocotools is only used by the tests, as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

RLE = dict[str, Any]
"""A COCO RLE: ``{"size": [h, w], "counts": str | list[int]}``."""

# A 64-bit value needs at most 13 groups of 5 bits.
_MAX_GROUPS = 13


# ---------------------------------------------------------------------------------------------
# Counts <-> string


def _deltas(counts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Replaces ``counts[i]`` by ``counts[i] - counts[i - 2]`` for local indices ``i > 2``.

    Args:
        counts: (M,) int64, the runs of one or more masks concatenated.
        starts: (N,) int64, the index in ``counts`` where each mask's runs begin.
    """
    x = counts.copy()
    lengths = np.diff(np.append(starts, len(counts)))
    local = np.arange(len(counts)) - np.repeat(starts, lengths)
    idx = np.flatnonzero(local > 2)
    x[idx] -= counts[idx - 2]
    return x


def _values_to_bytes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Writes each value of ``x`` as COCO's variable-length 5-bit groups.

    Args:
        x: (M,) int64 values (deltas, possibly negative).

    Returns:
        ``(chars, lengths)``: (C,) uint8 the characters of all values in order, and (M,) int64
        the number of characters of each value.
    """
    x = x.astype(np.int64, copy=True)
    out = np.zeros((len(x), _MAX_GROUPS), dtype=np.uint8)
    valid = np.zeros((len(x), _MAX_GROUPS), dtype=bool)
    active = np.ones(len(x), dtype=bool)
    for k in range(_MAX_GROUPS):
        if not active.any():
            break
        c = x & 0x1F
        x >>= 5  # arithmetic shift, as C's on a signed long
        more = np.where((c & 0x10) != 0, x != -1, x != 0)
        out[:, k] = (c | (more.astype(np.int64) << 5)) + 48
        valid[:, k] = active
        active &= more
    return out[valid], valid.sum(axis=1)


def compress_counts(counts: Sequence[int] | np.ndarray) -> str:
    """Compresses uncompressed RLE runs into COCO's ``counts`` string.

    Args:
        counts: (M,) non-negative run lengths, zeros first.

    Returns:
        The ASCII string pycocotools writes for these runs.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("Expected `counts` to be non-negative run lengths, but got a negative one")
    chars, _ = _values_to_bytes(_deltas(counts, np.zeros(1, dtype=np.int64)))
    return chars.tobytes().decode("ascii")


def _compress_many(counts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Compresses the concatenated runs of several masks at once.

    Args:
        counts: (M,) int64, every mask's runs concatenated.
        lengths: (N,) int64, the number of runs of each mask (summing to M).
    """
    starts = np.cumsum(lengths) - lengths
    chars, char_lengths = _values_to_bytes(_deltas(counts, starts))
    per_mask = np.add.reduceat(char_lengths, starts)  # every mask has at least one run
    ends = np.cumsum(per_mask)
    data = chars.tobytes()
    return [data[e - n : e].decode("ascii") for e, n in zip(ends.tolist(), per_mask.tolist())]


def decompress_counts(counts: str | bytes) -> np.ndarray:
    """Decodes COCO's compressed ``counts`` string into run lengths.

    Args:
        counts: the compressed string (``str`` or ``bytes``).

    Returns:
        (M,) int64 run lengths, zeros first.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes | bytearray):
        raise ValueError(f"Expected `counts` to be a str or bytes, but got {type(counts).__name__}")
    b = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    if ((b < 0) | (b > 63)).any():
        raise ValueError("Expected `counts` to hold characters '0'..'o' only (COCO compressed RLE)")
    more = (b & 0x20) != 0
    if more[-1]:
        raise ValueError("Expected `counts` to end with a complete value, but it is truncated")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group_len = ends - starts + 1
    k = np.arange(len(b)) - np.repeat(starts, group_len)
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    negative = (b[ends] & 0x10) != 0
    x[negative] |= np.left_shift(np.int64(-1), 5 * group_len[negative])
    # Undo the deltas: for i > 2, counts[i] = x[i] + counts[i - 2].
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])
    if len(x) > 2:
        runs[2::2] = np.cumsum(x[2::2])
    if (runs < 0).any():
        raise ValueError("Expected `counts` to decode to non-negative runs, but got a negative one")
    return runs


def rle_runs(rle: RLE) -> tuple[int, int, np.ndarray]:
    """Parses an RLE (compressed or uncompressed) into ``(h, w, runs)``.

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.

    Returns:
        The height, the width and (M,) int64 run lengths (zeros first, column-major). The
        runs are not checked to sum to ``h * w``.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(
            f"Expected `rle` to be a dict with 'size' and 'counts', but got {rle!r:.80}"
        )
    size = rle["size"]
    if len(size) != 2 or any(int(s) != s or s < 0 for s in size):
        raise ValueError(f"Expected `rle['size']` to be [height, width], but got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str | bytes | bytearray):
        runs = decompress_counts(counts)
    else:
        runs = np.asarray(counts, dtype=np.int64).reshape(-1)
        if (runs < 0).any():
            raise ValueError("Expected `rle['counts']` to be non-negative, but got a negative run")
    return h, w, runs


# ---------------------------------------------------------------------------------------------
# Single masks (numpy)


def encode_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a mask in column-major order (COCO's uncompressed RLE ``counts``).

    Args:
        mask: (H, W) bool (or 0/1 integers).

    Returns:
        (M,) int64 run lengths, starting with the number of leading zeros (possibly 0).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"Expected `mask` to be (H, W), but got shape {mask.shape}")
    flat = mask.astype(bool, copy=False).T.ravel()
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [n]])).astype(np.int64)
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return runs


def mask_to_rle(mask: np.ndarray, compressed: bool = True) -> RLE:
    """Encodes a binary mask as a COCO RLE.

    Args:
        mask: (H, W) bool (or 0/1 integers).
        compressed: write ``counts`` as pycocotools' string (default) or as a list of ints.

    Returns:
        ``{"size": [h, w], "counts": str}`` (or ``list[int]`` when not compressed).
    """
    runs = encode_counts(mask)
    h, w = np.asarray(mask).shape
    counts = compress_counts(runs) if compressed else runs.tolist()
    return {"size": [int(h), int(w)], "counts": counts}


def rle_to_mask(rle: RLE, box: Sequence[int] | None = None) -> np.ndarray:
    """Decodes a COCO RLE (compressed or uncompressed) into a binary mask.

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.
        box: optional pixel window ``(x0, y0, x1, y1)`` (end exclusive, inside the image): only
            that part of the mask is decoded, which costs ``O(runs + box area)`` instead of the
            whole image.

    Returns:
        (H, W) bool, or (y1 - y0, x1 - x0) bool when ``box`` is given.
    """
    h, w, runs = rle_runs(rle)
    total = int(runs.sum())
    if total != h * w:
        raise ValueError(
            f"Expected the RLE counts to sum to height * width = {h} * {w} = {h * w}, "
            f"but they sum to {total}"
        )
    if box is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
            raise ValueError(
                f"Expected `box` to be (x0, y0, x1, y1) inside the {w}x{h} mask, but got {box!r}"
            )
    lo, hi = x0 * h, x1 * h  # the columns x0..x1 are one contiguous range in Fortran order
    ends = np.cumsum(runs)
    begins = ends - runs
    clipped = np.clip(np.minimum(ends, hi) - np.maximum(begins, lo), 0, None)
    values = (np.arange(len(runs)) % 2).astype(bool)
    columns = np.repeat(values, clipped).reshape(x1 - x0, h)
    return np.ascontiguousarray(columns.T[y0:y1])


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels of a COCO RLE (pycocotools ``area``).

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.
    """
    _, _, runs = rle_runs(rle)
    return int(runs[1::2].sum())


def rle_to_bbox(rle: RLE) -> list[float]:
    """Bounding box ``[x, y, w, h]`` of a COCO RLE, computed exactly as pycocotools ``toBbox``.

    An empty mask gives ``[0, 0, 0, 0]``. pycocotools' rules (2.0.8 and later) are kept: a
    trailing run of zeros is ignored, zero-length runs of ones are skipped, a run of ones that
    wraps from one column into the next makes the box span the full height, and the width and
    height are computed in 32-bit unsigned arithmetic.

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.

    Returns:
        ``[x, y, w, h]`` as floats, in pixels.
    """
    h, w, runs = rle_runs(rle)
    m = (len(runs) // 2) * 2
    if m == 0:
        return [0.0, 0.0, 0.0, 0.0]
    ends = np.cumsum(runs[:m])
    fg = np.arange(1, m, 2)
    fg = fg[runs[fg] > 0]  # runs of ones, zero-length ones skipped
    xs, ys, xe, ye = w, h, 0, 0
    if len(fg) and h > 0:
        start = ends[fg] - runs[fg]
        last = ends[fg] - 1
        x_start, x_end = start // h, last // h
        xs = min(xs, int(x_start.min()))
        xe = max(xe, int(x_end.max()))
        if (x_start < x_end).any():
            ys, ye = 0, h - 1
        else:
            ys = min(ys, int((start % h).min()))
            ye = max(ye, int((last % h).max()))
    wrap = 1 << 32
    return [float(xs), float(ys), float((xe - xs + 1) % wrap), float((ye - ys + 1) % wrap)]


# ---------------------------------------------------------------------------------------------
# Batches (torch, on any device)


def _batch_runs(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run lengths of a batch of masks, computed on the masks' device.

    Args:
        masks: (N, H, W) bool.

    Returns:
        ``(runs, lengths)`` on the same device: (M,) int64 every mask's runs concatenated, and
        (N,) int64 the number of runs of each mask.
    """
    n, h, w = masks.shape
    hw = h * w
    device = masks.device
    flat = masks.transpose(1, 2).reshape(n, hw)
    # A boundary before pixel c when it differs from pixel c - 1 (a virtual 0 before pixel 0).
    changes = torch.cat([flat[:, :1], flat[:, 1:] != flat[:, :-1]], dim=1)
    del flat
    rows, cols = changes.nonzero(as_tuple=True)
    del changes
    per_mask = torch.bincount(rows, minlength=n)
    # Boundaries of mask i in `ext`: 0, its changes, then hw.
    ext = torch.empty(rows.numel() + 2 * n, dtype=torch.int64, device=device)
    ext[torch.arange(rows.numel(), device=device) + 2 * rows + 1] = cols
    first = 2 * torch.arange(n, device=device) + torch.cumsum(per_mask, 0) - per_mask
    last = first + per_mask + 1
    ext[first] = 0
    ext[last] = hw
    steps = ext[1:] - ext[:-1]
    keep = torch.ones_like(steps, dtype=torch.bool)
    keep[last[:-1]] = False  # the step from one mask's end to the next mask's start
    return steps[keep], per_mask + 1


@torch.no_grad()
def masks_to_rles(masks: torch.Tensor, max_pixels: int = 1 << 28) -> list[RLE]:
    """Encodes a batch of masks as compressed COCO RLEs; run lengths are found on the device.

    The masks are processed in chunks of at most ``max_pixels`` pixels to bound memory; the run
    lengths of all chunks are moved to the CPU in a single transfer, where they are packed into
    pycocotools-compatible strings.

    Args:
        masks: (N, H, W) bool tensor, on any device.
        max_pixels: upper bound on ``N * H * W`` handled at once.

    Returns:
        N dicts ``{"size": [h, w], "counts": str}``.
    """
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        raise ValueError(
            f"Expected `masks` to be an (N, H, W) tensor, but got "
            f"{getattr(masks, 'shape', type(masks).__name__)}"
        )
    n, h, w = masks.shape
    if n == 0:
        return []
    masks = masks.bool()
    chunk = max(1, max_pixels // max(1, h * w))
    runs, lengths = [], []
    for i in range(0, n, chunk):
        r, ln = _batch_runs(masks[i : i + chunk])
        runs.append(r)
        lengths.append(ln)
    lengths_t = torch.cat(lengths)
    packed = torch.cat([torch.cat(runs), lengths_t]).cpu().numpy()
    num_runs = packed.size - n
    strings = _compress_many(packed[:num_runs], packed[num_runs:])
    return [{"size": [int(h), int(w)], "counts": s} for s in strings]


@torch.no_grad()
def rles_to_masks(rles: Sequence[RLE], device: torch.device | str | None = None) -> torch.Tensor:
    """Decodes COCO RLEs of one image size into a batch of masks on ``device``.

    The strings are parsed on the CPU; the run lengths travel to the device in one transfer and
    are expanded there.

    Args:
        rles: N dicts ``{"size": [h, w], "counts": str | bytes | list[int]}``, all one size.
        device: where the masks go (default: the CPU).

    Returns:
        (N, H, W) bool tensor on ``device`` ((0, 0, 0) when ``rles`` is empty).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if len(rles) == 0:
        return torch.zeros((0, 0, 0), dtype=torch.bool, device=device)
    parsed = [rle_runs(rle) for rle in rles]
    h, w = parsed[0][0], parsed[0][1]
    for i, (hi, wi, runs) in enumerate(parsed):
        if (hi, wi) != (h, w):
            raise ValueError(
                f"Expected all RLEs to have size [{h}, {w}], but RLE {i} has size [{hi}, {wi}]"
            )
        if int(runs.sum()) != h * w:
            raise ValueError(
                f"Expected the counts of RLE {i} to sum to height * width = {h * w}, "
                f"but they sum to {int(runs.sum())}"
            )
    all_runs = np.concatenate([runs for _, _, runs in parsed])
    values = np.concatenate([np.arange(len(runs)) % 2 for _, _, runs in parsed])
    both = torch.from_numpy(np.stack([all_runs, values])).to(device)
    flat = torch.repeat_interleave(both[1].to(torch.uint8), both[0], output_size=len(rles) * h * w)
    return flat.view(len(rles), w, h).transpose(1, 2).bool().contiguous()
