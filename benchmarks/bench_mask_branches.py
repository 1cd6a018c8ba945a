"""Mask branches side by side: s/image of real-size random-weight SAM-family models.

Each preset's real architecture (``fiftyone_ssa/testing/configs``) is saved with random weights
and loaded through the branch loaders, as real weights are. On one image, in one process, each
model runs (one warm-up, then ``--repeats`` timed rounds):

- ``ours``: the project's generator (``TransformersSamGenerator`` for SAM 2.1 / EdgeTAM /
  SAM-HQ, ``FastMaskGenerator`` for segment-anything's SAM), at the given settings;
- ``ours, model's decoder`` (SAM 2.1 / EdgeTAM): the same generator with the model's own mask
  decoder (``model(image_embeddings=..., input_points=...)``) in place of
  ``PromptBatchDecoder``, which shows what the batched decoder saves;
- ``reference``: the model's reference generator at the same settings: transformers'
  ``pipeline("mask-generation")`` for the transformers models, segment-anything's
  ``SamAutomaticMaskGenerator`` for SAM.

Random weights predict IoU near 0.5 (SAM-HQ near 0), so at SSA's thresholds every mask would be
filtered out before upsampling; the thresholds are off here (every candidate is upsampled,
scored and goes through NMS: the post-processing's worst case).

Usage: ``python -m benchmarks.bench_mask_branches [--models sam2.1-hiera-tiny,edgetam,sam-vit-b]
[--size 480x720] [--points-per-side 16] [--crop-n-layers 0] [--repeats 1] [--markdown out.md]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fiftyone_ssa.models.masks.prompt_decoder import SAM2_DECODER_MODELS
from fiftyone_ssa.models.masks.transformers_sam import TransformersSamGenerator
from fiftyone_ssa.testing import random_init

DEFAULT_MODELS = ("sam2.1-hiera-tiny", "edgetam", "sam-vit-b")


def _image(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (200, 180, 40)
    image[:, (2 * width) // 3 :] = (30, 60, 220)
    return image + rng.integers(0, 25, image.shape, dtype=np.uint8)


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


class _ModelDecoderGenerator(TransformersSamGenerator):
    """The generator with the model's own mask decoder, as before ``PromptBatchDecoder``."""

    def _make_decoder(self, model):
        return model


def bench_model(
    name: str,
    image: np.ndarray,
    settings: dict,
    repeats: int,
    root: Path,
    reference: bool = True,
) -> dict:
    """s/image of ours and the reference for one preset.

    Args:
        name: a mask preset with a kept config (or a segment-anything SAM preset).
        image: (H, W, 3) uint8.
        settings: mask generator settings (segment-anything's names).
        repeats: timed rounds after one warm-up.
        root: scratch directory for the saved model.
        reference: also time the reference generator and the model's own decoder.

    Returns:
        ``{"model", "ours_s", "model_decoder_s", "reference_s", "ours_masks",
        "reference_masks", "parameters"}`` (``model_decoder_s`` None for SAM and SAM-HQ).
    """
    from PIL import Image

    from fiftyone_ssa.models.masks.branches import load_mask_branch

    directory = random_init.save_random_model(name, root / name)
    if name.startswith("sam-vit"):
        from segment_anything import SamAutomaticMaskGenerator

        branch = load_mask_branch(directory, device="cpu", **settings)
        ref = SamAutomaticMaskGenerator(branch.model, output_mode="binary_mask", **settings)
        run_ref = lambda: ref.generate(image)  # noqa: E731
        count_ref = len
    else:
        from transformers import pipeline

        branch = load_mask_branch(directory, device="cpu", **settings)
        generator = pipeline(
            "mask-generation", model=branch.model, image_processor=branch.image_processor
        )
        pil = Image.fromarray(image)
        kwargs = {
            "points_per_crop": settings["points_per_side"],
            "points_per_batch": settings["points_per_batch"],
            "crops_n_layers": settings["crop_n_layers"],
            "pred_iou_thresh": settings["pred_iou_thresh"],
            "stability_score_thresh": settings["stability_score_thresh"],
            "crops_nms_thresh": settings.get("box_nms_thresh", 0.7),
        }
        run_ref = lambda: generator(pil, **kwargs)  # noqa: E731
        count_ref = lambda out: len(out["masks"])  # noqa: E731
    ours_s, ours = _timed(lambda: branch.generate(image), repeats)
    model_decoder_s = ref_s = ref_masks = None
    if reference and type(branch.model).__name__ in SAM2_DECODER_MODELS:
        plain = _ModelDecoderGenerator(branch.model, branch.image_processor, **branch.options)
        model_decoder_s, _ = _timed(lambda: plain.generate(image), repeats)
    if reference:
        ref_s, ref = _timed(run_ref, repeats)
        ref_masks = count_ref(ref)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in branch.model.parameters()),
        "ours_s": ours_s,
        "model_decoder_s": model_decoder_s,
        "reference_s": ref_s,
        "ours_masks": len(ours),
        "reference_masks": ref_masks,
    }


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", default="480x720", help="HxW")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="time only ours (choosing a preset), not the reference or the model's decoder",
    )
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    image = _image(height, width)
    settings = {
        "points_per_side": args.points_per_side,
        "points_per_batch": 64,
        "crop_n_layers": args.crop_n_layers,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "min_mask_region_area": 0,
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in args.models.split(","):
            row = bench_model(name, image, settings, args.repeats, Path(tmp), not args.no_reference)
            rows.append(row)
            print(
                f"{name}: ours {row['ours_s']:.2f} s/image ({row['ours_masks']} masks), "
                f"model's decoder {_seconds(row['model_decoder_s'])}, "
                f"reference {_seconds(row['reference_s'])} s/image "
                f"({row['reference_masks']} masks)",
                flush=True,
            )
    lines = [
        f"{height}x{width}, {args.points_per_side} points per side, crop layers "
        f"{args.crop_n_layers}, thresholds off, fp32, {torch.get_num_threads()} threads, "
        f"{args.repeats} timed round(s) after a warm-up",
        "",
        "| mask branch | parameters | ours s/image | ours, model's decoder s/image | "
        "reference s/image | reference | masks (ours / reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reference = (
            "SamAutomaticMaskGenerator"
            if row["model"].startswith("sam-vit")
            else 'pipeline("mask-generation")'
        )
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.1f}M | {row['ours_s']:.2f} | "
            f"{_seconds(row['model_decoder_s'])} | {_seconds(row['reference_s'])} | {reference} | "
            f"{row['ours_masks']} / "
            f"{row['reference_masks']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return rows


if __name__ == "__main__":
    main()
