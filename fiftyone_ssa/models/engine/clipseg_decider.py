"""CLIPSeg's final say: which of a mask's top-k names wins most of the mask's own pixels.

For every mask, CLIPSeg segments the mask's 1.6x crop once per proposed name; each pixel takes
the name with the highest logit, and the mask's class is the name that wins most of the mask's
pixels in the crop (the mask cropped the same way and resized to CLIPSeg's output with nearest
sampling). Ties go to the better CLIP rank.

As in the original, the crop is preprocessed at the processor's size (352x352 for CIDAS' models)
and then resized bilinearly to 512x512, the size CLIPSeg runs at.

Batched: the vision encoder runs once per crop (not once per prompt) and stops at the last layer
the decoder reads, the light decoder runs once per (crop, name) pair, text embeddings once per
distinct name. A mask with a single proposal needs no model call at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fiftyone_ssa.core.crops import chunk_boxes, crop_mask_coverage, crop_resize_masks
from fiftyone_ssa.models.engine.captioner import crop_transform_from_processor
from fiftyone_ssa.models.engine.clip_filter import MAX_CACHED_TEXTS
from fiftyone_ssa.models.pretrained import load_pretrained_on_device
from fiftyone_ssa.models.semantic.clipseg_text import clipseg_text_embeddings

# The original SSA-engine's ``clipseg_segmentation`` resizes CLIPSeg's inputs to this size.
ORIGINAL_INPUT_SIZE = (512, 512)


@dataclass
class Decision:
    """CLIPSeg's verdict on one mask.

    Attributes:
        name: the winning proposal.
        share: the fraction of the mask's pixels (in the resized crop) the winner takes.
    """

    name: str
    share: float


def _check_square(size, what: str) -> tuple[int, int]:
    """``size`` as an (h, h) tuple; ValueError unless square (CLIPSeg's decoder needs one)."""
    if len(size) != 2 or size[0] != size[1] or size[0] < 1:
        raise ValueError(
            f"Expected a square {what} (h, h) (CLIPSeg's decoder needs one), but got {size}"
        )
    return (int(size[0]), int(size[1]))


class ClipSegDecider:
    """Chooses each mask's class among its proposals with CLIPSeg.

    Args:
        path: a local directory saved with ``save_pretrained`` (model and ``CLIPSegProcessor``).
        device: torch device; CUDA when available by default.
        half: run in float16 on CUDA.
        batch_size: crops per vision-encoder call.
        input_size: (h, h) the preprocessed crops are resized to before the model (square:
            CLIPSeg's decoder needs it); ``None`` keeps the processor's own size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device=None,
        half: bool = True,
        batch_size: int = 64,
        input_size: tuple[int, int] | None = ORIGINAL_INPUT_SIZE,
    ):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
        if input_size is not None:
            _check_square(input_size, "`input_size`")  # before loading anything
        self.path = Path(path)
        self.name = str(path)
        self.processor, self.model, self.device, self.dtype = load_pretrained_on_device(
            self.path, CLIPSegProcessor, CLIPSegForImageSegmentation, "CLIPSeg", device, half
        )
        self.transform = crop_transform_from_processor(self.processor.image_processor)
        self.input_size = _check_square(
            input_size or self.transform.size, "`input_size` or processor size"
        )
        self.batch_size = batch_size
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIPSeg's conditional embeddings of names, each distinct name computed once.

        Returns:
            (T, D) in the model's dtype.
        """
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if len(self._text_cache) + len(missing) > MAX_CACHED_TEXTS:
            self._text_cache.clear()
            missing = list(dict.fromkeys(texts))
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            embeds = clipseg_text_embeddings(self.model, self.processor.tokenizer, chunk)
            self._text_cache.update(zip(chunk, embeds))
        return torch.stack([self._text_cache[t] for t in texts])

    def pixels(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """CLIPSeg's inputs for crops of one image: processor-sized, then resized bilinearly.

        Args:
            image: (3, H, W) uint8 RGB.
            boxes: (N, 4) int64 ``[x0, y0, x1, y1]``, end-exclusive.

        Returns:
            (N, 3, *input_size) float32 on the image's device.
        """
        crops = self.transform(image, boxes)
        if tuple(crops.shape[-2:]) == self.input_size:
            return crops
        return F.interpolate(crops, size=self.input_size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def vision_activations(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The vision encoder's hidden states the decoder reads, one encoder pass per crop.

        The encoder stops after the deepest layer in ``config.extract_layers``: the layers
        above it only feed the pooled output, which segmentation never reads.

        Args:
            pixels: (B, 3, h, w) float32, as :meth:`pixels` makes them.

        Returns:
            One (B, L, C) tensor per ``config.extract_layers`` entry.
        """
        vision = self.model.clip.vision_model
        hidden = vision.embeddings(
            pixels.to(self.device, self.dtype), interpolate_pos_encoding=True
        )
        hidden = vision.pre_layrnorm(hidden)
        wanted = set(self.model.extract_layers)
        kept = {}
        for index, layer in enumerate(vision.encoder.layers[: max(wanted) + 1]):
            hidden = layer(hidden, None)
            if index in wanted:
                kept[index] = hidden
        return [kept[i] for i in self.model.extract_layers]

    @torch.no_grad()
    def prompt_logits(
        self, activations: list[torch.Tensor], crop_index: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Decoder logits for (crop, prompt) pairs, sharing each crop's encoder pass.

        Args:
            activations: the crops' :meth:`vision_activations`.
            crop_index: (P,) int64, the crop of each pair.
            embeds: (P, D) conditional embeddings, the prompt of each pair.

        Returns:
            (P, h', w') float32 logits.
        """
        selected = [a.index_select(0, crop_index) for a in activations]
        logits = self.model.decoder(selected, embeds).logits
        return logits.reshape(embeds.shape[0], *logits.shape[-2:]).float()

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
            boxes: B tensors (N_i, 4) int64 ``[x0, y0, x1, y1]`` crop boxes (1.6x), end-exclusive.
            masks: B tensors (N_i, H_i, W_i) bool, the masks of image i.
            proposals: sum(N_i) non-empty lists of names, image by image, mask by mask.

        Returns:
            sum(N_i) decisions.
        """
        total = sum(int(b.shape[0]) for b in boxes)
        if len(proposals) != total:
            raise ValueError(
                f"Expected one proposal list per mask, but got {len(proposals)} for {total} masks"
            )
        if any(len(p) == 0 for p in proposals):
            raise ValueError("Expected at least one proposal per mask, but got an empty list")
        decisions: list[Decision | None] = [
            Decision(p[0], 1.0) if len(p) == 1 else None for p in proposals
        ]
        # Only masks with a real choice go through the model.
        offsets, start = [], 0
        for b in boxes:
            offsets.append(start)
            start += int(b.shape[0])
        keep = [
            torch.tensor(
                [j for j in range(int(b.shape[0])) if decisions[offsets[i] + j] is None],
                dtype=torch.long,
            )
            for i, b in enumerate(boxes)
        ]
        flat = [[offsets[i] + j for j in k.tolist()] for i, k in enumerate(keep)]
        live_boxes = [b[k.to(b.device)] for b, k in zip(boxes, keep)]
        for image_index, slices in chunk_boxes(live_boxes, self.batch_size):
            pixels, crop_masks, ids = [], [], []
            for i, s in zip(image_index, slices):
                chosen = keep[i][s].to(masks[i].device)
                pixels.append(self.pixels(images[i], live_boxes[i][s]))
                crop_masks.append(self._crop_masks(masks[i][chosen], live_boxes[i][s]))
                ids.extend(flat[i][s])
            names = [list(proposals[m]) for m in ids]
            for m, decision in zip(
                ids, self._decide_crops(torch.cat(pixels), torch.cat(crop_masks), names)
            ):
                decisions[m] = decision
        return decisions  # type: ignore[return-value]

    def _output_size(self) -> tuple[int, int]:
        # The decoder's transposed convolutions upsample the patch grid by the patch size.
        patch = int(self.model.config.vision_config.patch_size)
        height, width = self.input_size
        return (height // patch) * patch, (width // patch) * patch

    def _crop_masks(self, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Masks cropped like their images and resized (nearest) to the logits' size."""
        size = self._output_size()
        small = crop_resize_masks(masks, boxes, size)
        empty = ~small.flatten(1).any(dim=1)
        if bool(empty.any()):  # too thin to be sampled: use the cells it touches
            small[empty] = crop_mask_coverage(masks[empty], boxes[empty.to(boxes.device)], size)
        return small

    @torch.no_grad()
    def _decide_crops(
        self, pixels: torch.Tensor, crop_masks: torch.Tensor, names: list[list[str]]
    ) -> list[Decision]:
        """Decisions for one batch of crops: (B, 3, h, w) pixels, (B, h', w') masks."""
        counts = [len(n) for n in names]
        width = max(counts)
        crop_index = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts)).to(
            self.device
        )
        prompts = [name for row in names for name in row]
        embeds = self.text_embeddings(prompts)
        logits = self.prompt_logits(self.vision_activations(pixels), crop_index, embeds)
        if tuple(logits.shape[-2:]) != tuple(crop_masks.shape[-2:]):
            raise RuntimeError(
                f"CLIPSeg returned {tuple(logits.shape[-2:])} logits for "
                f"{tuple(crop_masks.shape[-2:])} inputs"
            )
        # Per pixel, the best prompt of its crop; the lowest slot (best CLIP rank) wins ties.
        # Slot by slot rather than argmax over a (B, k, h, w) grid: a reduction over a short,
        # strided axis is slow on CPUs.
        slot = torch.cat([torch.arange(c) for c in counts]).to(self.device)
        best = logits[slot == 0].clone()  # every crop has a first prompt, in crop order
        winner = torch.zeros(best.shape, dtype=torch.long, device=self.device)
        for j in range(1, width):
            rows = slot == j
            crops = crop_index[rows]
            better = logits[rows] > best[crops]
            best[crops] = torch.where(better, logits[rows], best[crops])
            winner[crops] = torch.where(better, j, winner[crops])
        crop_masks = crop_masks.to(self.device)
        keys = torch.arange(len(names), device=self.device)[:, None, None] * width + winner
        votes = torch.bincount(keys[crop_masks], minlength=len(names) * width)
        votes = votes.view(len(names), width)
        best = votes.argmax(dim=1)
        area = crop_masks.flatten(1).sum(dim=1).clamp(min=1)
        share = (votes.gather(1, best[:, None])[:, 0] / area).cpu().tolist()
        return [Decision(row[b], s) for row, b, s in zip(names, best.cpu().tolist(), share)]
