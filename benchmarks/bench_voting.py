"""Benchmark: SSA voting + painting against the original per-mask loop, side by side.

SA-1B-sized images (default 1500x2250) with 100 masks and 150 classes. Three timings per run:

- reference: the original per-mask loop (RLE decoded with pycocotools, then per-mask torch ops
  on the device), see ``reference_ssa.py``;
- ours from RLE: batch RLE decoding (``rles_to_masks``) + batched voting and painting;
- ours on device: masks already on the device (as they come from SAM), voting and painting only.

Usage: ``python benchmarks/bench_voting.py [--device cuda] [--images 5] [--masks 100]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_ssa import reference_vote_and_paint  # noqa: E402

from fiftyone_ssa.core.rle import rles_to_masks  # noqa: E402
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes  # noqa: E402


def make_inputs(rng, height, width, n_masks, n_classes):
    """A blocky class map and ellipse-and-rectangle masks, as RLEs."""
    small = rng.integers(0, n_classes, size=(height // 50 + 1, width // 50 + 1))
    class_map = np.kron(small, np.ones((50, 50), dtype=np.int64))[:height, :width]
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((n_masks, height, width), dtype=bool)
    for i in range(n_masks):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(10, height // 4), rng.integers(10, width // 4)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    return class_map, masks, rles


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats, result


def ours(masks, class_map, n_classes):
    vote = vote_mask_classes(masks, class_map, n_classes)
    return paint_masks(class_map, masks, vote.labels, painting_order(vote.areas))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(args.images):
        class_map_np, masks_np, rles = make_inputs(
            rng, args.height, args.width, args.masks, args.classes
        )
        class_map = torch.from_numpy(class_map_np).to(device)
        t_ref, ref = timed(lambda: reference_vote_and_paint(rles, class_map), device, args.repeats)
        t_rle, from_rle = timed(
            lambda: ours(rles_to_masks(rles, device=device), class_map, args.classes),
            device,
            args.repeats,
        )
        masks = torch.from_numpy(masks_np).to(device)
        t_dev, on_device = timed(lambda: ours(masks, class_map, args.classes), device, args.repeats)
        # The original's topk on ties may pick another class than the lowest id; count equality.
        same = float((ref == on_device).float().mean())
        assert torch.equal(from_rle, on_device)
        rows.append((t_ref, t_rle, t_dev, same))
    t_ref, t_rle, t_dev, same = (float(np.mean([r[i] for r in rows])) for i in range(4))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name}); torch {torch.__version__}; {args.images} images "
        f"{args.height}x{args.width}, {args.masks} masks, {args.classes} classes"
    )
    print(f"{'path':<34}{'s/image':>10}{'speed-up':>10}")
    print(f"{'reference (per-mask loop, RLE)':<34}{t_ref:>10.4f}{1.0:>10.1f}")
    print(f"{'ours from RLE':<34}{t_rle:>10.4f}{t_ref / t_rle:>10.1f}")
    print(f"{'ours, masks on device':<34}{t_dev:>10.4f}{t_ref / t_dev:>10.1f}")
    print(f"pixels equal to the reference: {same:.6f}")


if __name__ == "__main__":
    main()
