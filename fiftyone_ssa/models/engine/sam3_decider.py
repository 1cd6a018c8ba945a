"""SAM 3 as SSA-engine's decider, in place of CLIPSeg: the proposal whose concept covers the
mask best.

For every mask with more than one proposal, each proposed name is a SAM 3 text concept on the
whole image (SAM 3 segments concepts on full images, so the 1.6x crops CLIPSeg reads are not
used). Its probabilities (``Sam3Processor.post_process_semantic_segmentation``'s scores,
bilinearly resized to the image) cover a pixel where they exceed ``threshold`` (0.5, the
processor's own). The mask's class is the proposal covering the largest share of the mask's
pixels; ties, and masks no proposal covers at all, go to the better CLIP rank. ``share`` is the
winner's covered fraction.

Batched per image: the image is encoded once and each distinct name among its masks'
proposals runs through the detector once (16 names at a time), text features cached across
images. The resize to the image is done inside each mask's box only, with the same bilinear
weights as ``F.interpolate``. Same interface as
:class:`~fiftyone_ssa.models.engine.clipseg_decider.ClipSegDecider` (``decide``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fiftyone_ssa.core.crops import mask_boxes_xywh
from fiftyone_ssa.core.upsample import bilinear_weights
from fiftyone_ssa.models.engine.clipseg_decider import Decision
from fiftyone_ssa.models.pretrained import default_device, load_pretrained
from fiftyone_ssa.models.semantic.sam3_concepts import (
    DEFAULT_CONCEPT_BATCH,
    Sam3Concepts,
    check_threshold,
)


class Sam3Decider:
    """Chooses each mask's class among its proposals with SAM 3's concept masks.

    Args:
        path: a local directory in ``facebook/sam3``'s layout.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 (autocast) on CUDA.
        threshold: a concept covers a pixel where its probability is above this.
        concept_batch: names run through the detector at once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device=None,
        half: bool = True,
        threshold: float = 0.5,
        concept_batch: int = DEFAULT_CONCEPT_BATCH,
    ):
        from transformers import Sam3Model, Sam3Processor

        check_threshold(threshold)
        self.path = Path(path)
        self.name = str(path)
        self.device = torch.device(device) if device else default_device()
        self.processor, self.model = load_pretrained(self.path, Sam3Processor, Sam3Model, "SAM 3")
        self.model.to(self.device).eval()
        # As the semantic branch: float32 weights, bfloat16 autocast on CUDA (SAM 3's own).
        self.dtype = torch.bfloat16 if (half and self.device.type == "cuda") else torch.float32
        self.threshold = float(threshold)
        self.concepts = Sam3Concepts(
            self.processor, self.model, self.device, self.dtype, concept_batch
        )

    def decide(
        self,
        images: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        proposals: Sequence[Sequence[str]],
    ) -> list[Decision]:
        """The class of every mask among its proposals.

        Args:
            images: B tensors (3, H_i, W_i) uint8 RGB, on the device.
            boxes: B tensors (N_i, 4), one per mask (CLIPSeg's crops; unused: SAM 3 reads the
                whole image).
            masks: B tensors (N_i, H_i, W_i) bool, the masks of image i.
            proposals: sum(N_i) non-empty lists of names, image by image, mask by mask.

        Returns:
            sum(N_i) decisions.
        """
        total = sum(int(m.shape[0]) for m in masks)
        if len(proposals) != total:
            raise ValueError(
                f"Expected one proposal list per mask, but got {len(proposals)} for {total} masks"
            )
        if any(len(p) == 0 for p in proposals):
            raise ValueError("Expected at least one proposal per mask, but got an empty list")
        decisions: list[Decision] = []
        start = 0
        for image, image_masks in zip(images, masks):
            stop = start + int(image_masks.shape[0])
            decisions.extend(self._decide_image(image, image_masks, proposals[start:stop]))
            start = stop
        return decisions

    @torch.no_grad()
    def _decide_image(
        self, image: torch.Tensor, masks: torch.Tensor, proposals: Sequence[Sequence[str]]
    ) -> list[Decision]:
        decisions = [Decision(p[0], 1.0) if len(p) == 1 else None for p in proposals]
        live = [i for i, d in enumerate(decisions) if d is None]
        if not live:
            return decisions  # type: ignore[return-value]
        names = list(dict.fromkeys(n for i in live for n in proposals[i]))
        row = {n: r for r, n in enumerate(names)}
        scores = self.concepts.probabilities(self.concepts.encode_image(image), names)
        shifted = scores - self.threshold  # > 0 where a concept covers (bilinear commutes)
        height, width = masks.shape[1:]
        wy = bilinear_weights(shifted.shape[1], height, shifted.device)
        wx = bilinear_weights(shifted.shape[2], width, shifted.device)
        boxes = mask_boxes_xywh(masks[live]).long().tolist()
        for i, (x, y, w, h) in zip(live, boxes):
            candidates = torch.tensor([row[n] for n in proposals[i]], device=shifted.device)
            inside = masks[i, y : y + h, x : x + w].to(shifted.device)
            area = int(inside.sum())
            if area == 0:
                decisions[i] = Decision(proposals[i][0], 0.0)
                continue
            box_scores = torch.einsum(
                "rh,khw,cw->krc", wy[y : y + h], shifted[candidates], wx[x : x + w]
            )
            covered = ((box_scores > 0) & inside).flatten(1).sum(dim=1)
            best = int(covered.argmax())  # the first maximum: the better CLIP rank
            decisions[i] = Decision(proposals[i][best], int(covered[best]) / area)
        return decisions  # type: ignore[return-value]
