"""SSA-engine's deciders side by side: s/image of the SAM 3 decider and the CLIPSeg decider on
the same masks and proposals.

Both are real-size random-weight models (``fiftyone_ssa/testing/configs``: ``sam3``, the
``facebook/sam3`` detector, and ``clipseg-rd64-refined``), saved and loaded by their deciders as
real weights are. One random image, ``--masks`` ellipse masks, each with ``--top-k`` proposals
drawn from ``--names`` names; both deciders get the same inputs (CLIPSeg its 1.6x crops, SAM 3
the whole image), in turn, after one warm-up each.

Usage: ``python -m benchmarks.bench_deciders [--size 480x720] [--masks 16] [--top-k 3]
[--names 12] [--repeats 1] [--device cpu] [--cache DIR] [--markdown out.md]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_semantic import saved_model
from benchmarks.harness import Results
from benchmarks.voting_inputs import make_voting_inputs
from fiftyone_ssa.core.crops import mask_boxes_xywh, scale_boxes
from fiftyone_ssa.models.engine.clipseg_decider import ClipSegDecider
from fiftyone_ssa.models.engine.models import CLIPSEG_CROP_SCALE
from fiftyone_ssa.models.engine.sam3_decider import Sam3Decider

# Names of the kind SSA-engine proposes (ADE20K / COCO classes, caption nouns).
NAMES = (
    "person car tree building sky road grass dog cat chair table window door bicycle sign "
    "lamp bus truck plant wall fence pole bench umbrella"
).split()


def decider_inputs(size: tuple[int, int], n_masks: int, top_k: int, n_names: int, seed: int = 0):
    """One image, its masks, CLIPSeg's crop boxes and the masks' proposals.

    Returns:
        ``(image (3, H, W) uint8, masks (N, H, W) bool, boxes (N, 4), proposals)``.
    """
    if not 1 <= top_k <= n_names <= len(NAMES):
        raise ValueError(f"Expected 1 <= top_k <= names <= {len(NAMES)}, got {top_k}, {n_names}")
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).permute(2, 0, 1)
    _, masks, _ = make_voting_inputs(rng, size[0], size[1], n_masks, 2)
    masks = torch.from_numpy(masks)
    boxes = scale_boxes(mask_boxes_xywh(masks), CLIPSEG_CROP_SCALE, size)
    proposals = [list(rng.choice(NAMES[:n_names], top_k, replace=False)) for _ in range(n_masks)]
    return image.contiguous(), masks, boxes, proposals


def run(
    size: tuple[int, int] = (480, 720),
    n_masks: int = 16,
    top_k: int = 3,
    n_names: int = 12,
    repeats: int = 1,
    device: str | None = None,
    cache: str | Path | None = None,
    tiny: bool = False,
) -> Results:
    """Times both deciders' ``decide`` on the same inputs, ``repeats`` rounds, in turn.

    Returns:
        One row per decider and round; notes with each one's s/image and the ratio.
    """
    if repeats < 1:
        raise ValueError(f"Expected `repeats` to be >= 1, but got {repeats}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="bench-deciders-"))
    deciders = {
        "CLIPSeg rd64-refined": ClipSegDecider(
            saved_model("clipseg-rd64-refined", root, tiny), device=device
        ),
        "SAM 3": Sam3Decider(saved_model("sam3", root, tiny), device=device),
    }
    image, masks, boxes, proposals = decider_inputs(size, n_masks, top_k, n_names)
    image, masks, boxes = image.to(device), masks.to(device), boxes.to(device)
    distinct = len({n for p in proposals for n in p})
    results = Results(
        f"SSA-engine deciders, one {size[0]}x{size[1]} image, {n_masks} masks x {top_k} "
        f"proposals ({distinct} distinct names)",
        device,
        f"real-size architectures{' (shrunken)' if tiny else ''} with random weights; "
        f"{repeats} rounds, the deciders in turn, after one warm-up each",
    )
    with torch.inference_mode():
        for decider in deciders.values():
            decider.decide([image], [boxes], [masks], proposals)  # warm-up
        for repeat in range(repeats):
            for name, decider in deciders.items():
                with results.stage(f"{name}, run {repeat + 1}", 1, n_masks):
                    decisions = decider.decide([image], [boxes], [masks], proposals)
                if [d.name in p for d, p in zip(decisions, proposals)] != [True] * n_masks:
                    raise RuntimeError(f"{name} chose a name outside a mask's proposals")
    means = {
        name: sum(r.seconds for r in results.rows if r.stage.startswith(name + ",")) / repeats
        for name in deciders
    }
    for name, decider in deciders.items():
        count = sum(p.numel() for p in decider.model.parameters())
        results.notes.append(
            f"{name} ({type(decider).__name__}, {count / 1e6:.1f} M parameters): "
            f"{means[name]:.3f} s/image, {means[name] / means['CLIPSeg rd64-refined']:.2f}x "
            "CLIPSeg's time"
        )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="480x720", help="HxW of the image")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--names", type=int, default=12, help="names the proposals come from")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache", default=None, help="where random models are saved and reused")
    parser.add_argument("--tiny", action="store_true", help="shrunken models (smoke test)")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    results = run(
        (height, width),
        args.masks,
        args.top_k,
        args.names,
        args.repeats,
        args.device,
        args.cache,
        args.tiny,
    )
    results.report(args.markdown)


if __name__ == "__main__":
    main()
