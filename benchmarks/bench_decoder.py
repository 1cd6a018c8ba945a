"""SAM's mask decoder for point prompts: the model's own module vs our PromptBatchDecoder.

The decoder is the same in every published SAM (ViT-B, -L and -H differ only in the image
encoder), and in every SAM 2.1 / EdgeTAM checkpoint (``--family sam2``: transformers'
``Sam2MaskDecoder``, which adds high-resolution skip features), so this runs the real-size
decoder with random weights on random image features, for the prompts of one crop in batches
as the mask generators send them. Both give the same logits (tests/test_sam_prompt_decoder.py,
tests/test_sam2_prompt_decoder.py); ours skips the upsampling of prompts none of whose masks
pass the predicted-IoU filter, so it is timed with the filter off (every mask kept) and with a
threshold that about ``--pass-fraction`` of the masks pass.

Usage: ``python -m benchmarks.bench_decoder [--family sam|sam2] [--device cuda] [--prompts 4096]
[--batch 256] [--variants fp32,bf16] [--markdown out.md]`` (defaults: 256 prompts in batches of
64 on the CPU, 4096 in batches of 256 on CUDA: one crop at the original SSA's 64 points per
side).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.harness import Results
from fiftyone_ssa.models.masks.prompt_decoder import PromptBatchDecoder
from fiftyone_ssa.models.masks.sam_loader import build_sam
from tests.fixtures.sam import module_decode

# segment-anything's ViT-B config with a 1-layer, 32-dim encoder: the decoder is full size.
CONFIG = {
    "name": "decoder-bench",
    "encoder_embed_dim": 32,
    "encoder_depth": 1,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [0],
    "image_size": 1024,
    "prompt_embed_dim": 256,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "iou_head_hidden_dim": 256,
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
MODULE_NAMES = {"sam": "segment-anything MaskDecoder", "sam2": "transformers Sam2MaskDecoder"}


def _sam2_module_decode(model, features, points, iou_threshold):
    """A transformers SAM 2 model's own decoding of (B, 2) points: kept logits and IoU."""
    labels = torch.ones((1, len(points), 1), dtype=torch.int64, device=points.device)
    out = model(
        image_embeddings=features,
        input_points=points[None, :, None, :],
        input_labels=labels,
        multimask_output=True,
    )
    masks, iou = out.pred_masks[0].flatten(0, 1), out.iou_scores[0].flatten()
    keep = iou > iou_threshold
    return masks[keep], iou[keep]


def run(
    family: str = "sam",
    device: str | None = None,
    prompts: int | None = None,
    batch: int | None = None,
    variants: tuple[str, ...] = ("fp32",),
    pass_fraction: float = 0.3,
) -> Results:
    """Times both decoders over the same prompts, with the IoU filter off and on.

    Args:
        family: ``sam`` (segment-anything's decoder) or ``sam2`` (transformers' SAM 2).
        device: torch device (default: CUDA when available).
        prompts: point prompts (default 4096 on CUDA, 256 elsewhere).
        batch: prompts per decoder call (default 256 on CUDA, 64 elsewhere).
        variants: ``fp32`` and/or ``bf16`` (autocast).
        pass_fraction: fraction of masks whose predicted IoU passes in the filtered runs.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    prompts = prompts or (4096 if cuda else 256)
    batch = batch or (256 if cuda else 64)
    if not 0.0 < pass_fraction < 1.0:
        raise ValueError(f"Expected `pass_fraction` in (0, 1), but got {pass_fraction}")
    if family not in MODULE_NAMES:
        raise ValueError(f"Expected `family` in {sorted(MODULE_NAMES)}, but got {family!r}")
    torch.manual_seed(0)
    points = torch.rand(prompts, 2, device=device) * 1024
    if family == "sam":
        model = build_sam(CONFIG).to(device)
        embedding = torch.randn(1, 256, 64, 64, device=device)
        module = module_decode
    else:
        from transformers import Sam2Config, Sam2Model

        model = Sam2Model(Sam2Config()).to(device).eval()  # transformers' default: the decoder
        embedding = [  # of every SAM 2.1 checkpoint
            torch.randn(1, 32, 256, 256, device=device),
            torch.randn(1, 64, 128, 128, device=device),
            torch.randn(1, 256, 64, 64, device=device),
        ]
        module = _sam2_module_decode
    ours = PromptBatchDecoder(model)

    with torch.inference_mode():  # an IoU threshold that about `pass_fraction` of masks pass
        _, iou = module(model, embedding, points[:batch], 0.0)
        if family == "sam":  # random SAM weights predict IoU near 0: spread them
            model.mask_decoder.iou_prediction_head.layers[-1].bias += 10.0 - iou.mean()
            _, iou = module(model, embedding, points[:batch], 0.0)
        threshold = float(iou.quantile(1.0 - pass_fraction))

    results = Results(
        f"{family.upper()} mask decoder, {prompts} point prompts in batches of {batch}",
        device,
        f"real-size decoder (the same in every {family.upper()} checkpoint) with random "
        "weights; 3 masks per prompt",
    )
    for variant in variants:
        dtype = DTYPES[variant]
        for label, cut in [("filter off", 0.0), (f"~{pass_fraction:.0%} pass", threshold)]:

            def reference(points, cut=cut):
                chunks = points.split(batch)
                return sum(len(module(model, embedding, c, cut)[0]) for c in chunks)

            def fast(points, cut=cut):
                context = ours.prepare(embedding)
                return sum(len(ours.decode(context, c, cut)[0]) for c in points.split(batch))

            seconds = []
            for name, decode in [
                (MODULE_NAMES[family], reference),
                ("ours (PromptBatchDecoder)", fast),
            ]:
                autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
                with torch.inference_mode(), autocast:
                    decode(points[:batch])  # warm-up
                    with results.stage(f"{variant}, {label}: {name}", 1) as row:
                        row.masks = decode(points)
                seconds.append(row.seconds)
            row.note = f"{seconds[0] / seconds[1]:.1f}x {MODULE_NAMES[family]}"
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sam", choices=sorted(MODULE_NAMES))
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--variants", default="fp32", help=f"comma-separated: {list(DTYPES)}")
    parser.add_argument("--pass-fraction", type=float, default=0.3)
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    results = run(
        args.family,
        args.device,
        args.prompts,
        args.batch,
        tuple(args.variants.split(",")),
        args.pass_fraction,
    )
    results.report(args.markdown)


if __name__ == "__main__":
    main()
