"""Benchmark: writing close-set SSA's labels of SA-1B-sized images to FiftyOne, two ways.

Per image: the painted ``fo.Segmentation`` and one ``fo.Detection`` per mask (mask cropped to
its box, the pipeline's attributes). Two timings, side by side on the same labels:

- per-sample save: each Detection built and then given its mask (``det.mask = crop``), each
  sample fetched, updated and saved on its own (the pipeline's path before session 3);
- ours: ``labels.build_detections`` (mask passed to the constructor) and the run loop's
  ``SampleWriter`` (one bulk write per batch, on a background thread).

Usage: ``python -m benchmarks.bench_write [--images 8] [--masks 100] [--batch-size 4]``.
"""

from __future__ import annotations

import argparse
import os
import time

import fiftyone as fo
import numpy as np
import torch

from benchmarks.harness import Results
from benchmarks.voting_inputs import make_voting_inputs
from fiftyone_ssa.core.crops import mask_boxes_xyxy
from fiftyone_ssa.labelling.writer import SampleWriter
from fiftyone_ssa.labels import build_detections


def attributes_of(n: int) -> list[dict]:
    """The pipeline's per-mask attributes (values do not matter for speed)."""
    return [
        {
            "confidence": 0.9,
            "class_proposals": ["wall", "floor", "sky"],
            "predicted_iou": 0.95,
            "stability_score": 0.97,
            "area": 1000,
        }
        for _ in range(n)
    ]


def detections_mask_assigned(masks: torch.Tensor, labels: list[str]) -> fo.Detections:
    """Detections built as before: the mask assigned after construction."""
    n, height, width = masks.shape
    detections = []
    for i, (x0, y0, x1, y1) in enumerate(mask_boxes_xyxy(masks).tolist()):
        box = [x0 / width, y0 / height, (x1 - x0 + 1) / width, (y1 - y0 + 1) / height]
        det = fo.Detection(label=labels[i], bounding_box=box, **attributes_of(1)[0])
        det.mask = masks[i, y0 : y1 + 1, x0 : x1 + 1].numpy()
        detections.append(det)
    return fo.Detections(detections=detections)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2250)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    if min(args.images, args.masks, args.height, args.width, args.batch_size) < 1:
        parser.error("--images, --masks, --height, --width and --batch-size must be >= 1")

    class_map, masks, _ = make_voting_inputs(
        np.random.default_rng(0), args.height, args.width, args.masks, 150
    )
    painted = class_map.astype(np.uint8)
    masks = torch.from_numpy(masks)
    labels = ["wall"] * args.masks
    results = Results(
        f"writing labels, {args.images} images {args.height}x{args.width}, {args.masks} masks",
        torch.device("cpu"),
        "painted Segmentation (50x50-pixel class blocks) + one Detection per ellipse mask",
    )
    dataset = fo.Dataset(f"ssa-bench-write-{os.getpid()}-{time.time_ns()}")
    try:
        dataset.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(2 * args.images)])
        for name, kind in [("ssa", fo.Segmentation), ("ssa_masks", fo.Detections)]:
            dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=kind)
        ids = dataset.values("id")
        n_masks = args.images * args.masks
        with results.stage("per-sample save", args.images, n_masks) as base:
            for sample_id in ids[: args.images]:
                sample = dataset[sample_id]
                sample.update_fields(
                    {
                        "ssa": fo.Segmentation(mask=painted),
                        "ssa_masks": detections_mask_assigned(masks, labels),
                    },
                    expand_schema=False,
                )
                sample.save()
        with results.stage("ours: build_detections + SampleWriter", args.images, n_masks) as ours:
            with SampleWriter(dataset) as writer:
                for i, sample_id in enumerate(ids[args.images :]):
                    writer.add(
                        sample_id,
                        {
                            "ssa": fo.Segmentation(mask=painted),
                            "ssa_masks": build_detections(
                                masks, labels, attributes_of(len(labels))
                            ),
                        },
                    )
                    if (i + 1) % args.batch_size == 0:
                        writer.flush()
        ours.note = f"{base.seconds / ours.seconds:.1f}x the per-sample save"
    finally:
        dataset.delete()
    results.report(args.markdown)


if __name__ == "__main__":
    main()
