"""Benchmark: SSA voting + painting against the original per-mask loop, side by side.

SA-1B-sized images (default 1500x2250) with 100 masks and 150 classes. Four timings per run:

- reference: the original per-mask loop (RLE decoded with pycocotools, then per-mask torch ops
  on the device), see ``reference_ssa.py``;
- ours from RLE, run space: ``core.rle_voting`` (votes and painting on the RLE runs, no dense
  masks);
- ours from RLE, dense: batch RLE decoding (``rles_to_masks``) + batched dense voting/painting;
- ours on device: masks already on the device (as they come from SAM), dense voting/painting.

Usage: ``python -m benchmarks.bench_voting [--device cuda] [--images 3] [--masks 100]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from benchmarks.reference_ssa import reference_vote_and_paint
from benchmarks.voting_inputs import make_voting_inputs
from fiftyone_ssa.core.rle import rles_to_masks
from fiftyone_ssa.core.rle_voting import vote_and_paint_masks, vote_and_paint_rles
from fiftyone_ssa.core.ssa import label_one_image
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes


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


def dense(masks, class_map, n_classes):
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
    paths = ["reference (per-mask loop, RLE)", "ours from RLE, run space", "ours from RLE, dense"]
    paths += ["ours, masks on device", "ours, masks on device via runs (pipeline's CPU path)"]
    paths += ["label_one_image: votes, painting and doubt signals (the pipeline's path)"]
    rows = []
    for _ in range(args.images):
        class_map_np, masks_np, rles = make_voting_inputs(
            rng, args.height, args.width, args.masks, args.classes
        )
        class_map = torch.from_numpy(class_map_np).to(device)
        masks = torch.from_numpy(masks_np).to(device)
        runs = [
            lambda: reference_vote_and_paint(rles, class_map),
            lambda: vote_and_paint_rles(rles, class_map, args.classes)[1],
            lambda: dense(rles_to_masks(rles, device=device), class_map, args.classes),
            lambda: dense(masks, class_map, args.classes),
            lambda: vote_and_paint_masks(masks, class_map, args.classes)[1],
            lambda: label_one_image(class_map, masks, args.classes).painted,
        ]
        timings, outputs = zip(*(timed(fn, device, args.repeats) for fn in runs))
        # The original's topk on ties may pick another class than the lowest id; count equality.
        same = float((outputs[0] == outputs[3]).float().mean())
        if not all(torch.equal(outputs[i], outputs[3]) for i in (1, 2, 4, 5)):
            raise RuntimeError("our paths disagree")
        rows.append((*timings, same))
    means = [float(np.mean([r[i] for r in rows])) for i in range(len(paths) + 1)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name}); torch {torch.__version__}; {args.images} images "
        f"{args.height}x{args.width}, {args.masks} masks, {args.classes} classes, "
        f"{args.repeats} repeats"
    )
    print("| path | s/image | speed-up |\n| --- | --- | --- |")
    for path, seconds in zip(paths, means[: len(paths)]):
        print(f"| {path} | {seconds:.4f} | {means[0] / seconds:.1f} |")
    print(f"pixels equal to the reference: {means[len(paths)]:.6f}")


if __name__ == "__main__":
    main()
