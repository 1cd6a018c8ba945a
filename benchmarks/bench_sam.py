"""SAM automatic mask generation: segment-anything's generator vs ours, same model, same image.

Both generators run in one process on the same model and image; the table gives seconds per
image, masks, the fraction of segment-anything's masks that ours reproduces (same index,
IoU >= 0.99), peak memory and the ratio. Random SAM weights give masks that barely depend on the
prompt, so by default the model's weights are set to segment "blobs" around each point (the
test suite's ``make_blob_segmenter``), which gives many distinct masks, as real weights do.

Cases:

- ``tiny``: a 1-layer SAM, 400x600, 16 points per side, thresholds 0 (CPU, seconds).
- ``vitb``: ViT-B, 400x600, 16 points per side, thresholds 0 (CPU: minutes).
- ``original``: ViT-H at the original SSA's settings on a 1500x2250 image (GPU).

Usage: ``python -m benchmarks.bench_sam tiny [--device cpu] [--variants fp32,bf16]
[--markdown out.md]``; ``--stages`` splits our generator's time into encoder, decoder,
upsampling and small-region removal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.harness import MethodTimer, Results, Row, sync
from benchmarks.presets import ORIGINAL_SAM_OPTIONS, TINY_OVERRIDES
from fiftyone_ssa.testing import random_init

THRESHOLDS_0 = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
CASES = {
    "tiny": ("sam-vit-b", True, (400, 600), {"points_per_side": 16, **THRESHOLDS_0}),
    "vitb": ("sam-vit-b", False, (400, 600), {"points_per_side": 16, **THRESHOLDS_0}),
    "original": ("sam-vit-h", False, (1500, 2250), ORIGINAL_SAM_OPTIONS),
}
VARIANTS = {
    "fp32": {},
    "bf16": {"dtype": torch.bfloat16},
    "bf16+compile": {"dtype": torch.bfloat16, "compile": True},
}


def blob_model(name: str, tiny: bool, device: torch.device, iou_target: float | None):
    """A random SAM of the preset with blob-segmenting weights (see the module docstring)."""
    from fiftyone_ssa.testing.tiny_sam import make_blob_segmenter

    torch.manual_seed(0)
    model = random_init.build_random_model(name, TINY_OVERRIDES["sam"] if tiny else None)
    if tiny:
        model = make_blob_segmenter(model)
    else:
        model = make_blob_segmenter(model, content=0.5, gain=4.0, frequency=0.7)
    model = model.to(device)
    if iou_target is not None:
        calibrate_iou(model, iou_target, device)
    return model


@torch.no_grad()
def calibrate_iou(model, target: float, device: torch.device) -> None:
    """Shifts the IoU head so predicted IoUs centre on ``target`` (half pass a threshold there)."""
    from segment_anything import SamPredictor

    from tests.fixtures.sam import blob_scene

    predictor = SamPredictor(model)
    predictor.set_image(blob_scene(256, 256, seed=9))
    points = torch.rand(64, 1, 2, device=device) * 1024
    _, iou, _ = predictor.predict_torch(points, torch.ones(64, 1, device=device))
    model.mask_decoder.iou_prediction_head.layers[-1].bias += target - iou.mean()


def matched(reference: list[dict], masks: torch.Tensor) -> float:
    """Fraction of segment-anything's masks whose same-index mask of ours has IoU >= 0.99."""
    n = min(len(reference), int(masks.shape[0]))
    good = 0
    for start in range(0, n, 64):
        stop = min(start + 64, n)
        a = torch.as_tensor(np.stack([r["segmentation"] for r in reference[start:stop]]))
        a = a.to(masks.device).flatten(1)
        b = masks[start:stop].flatten(1)
        inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
        good += int(((inter / union.clamp(min=1)) >= 0.99).sum())
    return good / max(len(reference), 1)


def run(
    case: str = "tiny",
    device: str | None = None,
    variants: tuple[str, ...] = ("fp32",),
    reference: bool = True,
    stages: bool = False,
) -> Results:
    """Times segment-anything's generator and ours on one image of the case.

    Args:
        case: ``tiny``, ``vitb`` or ``original``.
        device: torch device (default: CUDA when available).
        variants: our generator's settings among :data:`VARIANTS`.
        reference: also run segment-anything's generator.
        stages: split our time into the generator's steps.
    """
    from segment_anything import SamAutomaticMaskGenerator

    from fiftyone_ssa.models.masks.fast_generator import FastMaskGenerator
    from tests.fixtures.sam import blob_scene

    name, tiny, (height, width), settings = CASES[case]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    iou = settings.get("pred_iou_thresh") or None
    model = blob_model(name, tiny, device, iou)
    image = blob_scene(height, width, seed=0, n_discs=40 if case == "original" else 10)
    results = Results(
        f"SAM mask generation, case {case}: {name}{' (tiny)' if tiny else ''} blob weights, "
        f"{height}x{width}",
        device,
        f"settings {settings}; random 'blob' weights stand in for SAM's trained weights",
    )
    ref_masks, t_ref = None, None
    if reference:
        generator = SamAutomaticMaskGenerator(model, **settings)
        with results.stage("segment-anything SamAutomaticMaskGenerator", 1) as row:
            ref_masks = generator.generate(image)
        row.masks, t_ref = len(ref_masks), row.seconds
    for variant in variants:
        ours = FastMaskGenerator(model, **VARIANTS[variant], **settings)
        ours.generate(image)  # warm-up (and compilation)
        timer = MethodTimer(device)
        if stages:
            import fiftyone_ssa.models.masks.fast_generator as module

            for owner, method, key in [
                (ours, "_embed", "encoder"),
                (ours, "_decode", "mask decoder"),
                (ours, "_logit_stats", "upsampling + stability"),
                (ours, "_materialise", "full-resolution masks"),
                (module, "postprocess_small_regions", "small regions"),
            ]:
                timer.wrap(owner, method, key)
        with results.stage(f"ours (FastMaskGenerator, {variant})", 1) as row:
            out = ours.generate(image)
        row.masks = len(out)
        notes = []
        if ref_masks is not None:
            notes.append(f"matched {matched(ref_masks, out.masks):.3f}")
            notes.append(f"{t_ref / row.seconds:.1f}x segment-anything")
        row.note = ", ".join(notes)
        for key, seconds in timer.seconds.items():
            results.rows.append(Row(f"  {variant}: {key}", seconds, 1))
        sync(device)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES), nargs="?", default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--variants", default="fp32", help=f"comma-separated: {list(VARIANTS)}")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--stages", action="store_true")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run(
        args.case,
        args.device,
        tuple(args.variants.split(",")),
        not args.no_reference,
        args.stages,
    )
    results.report(args.markdown)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
