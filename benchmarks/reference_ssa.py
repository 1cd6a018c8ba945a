"""The original SSA's per-mask pipelines, kept as the speed references.

- :func:`reference_vote_and_paint`: close-set voting as in the original's
  ``semantic_annotation_pipeline``: every annotation's RLE is decoded on the CPU with
  pycocotools, its pixels' classes gathered from the branch's class map, counted with
  ``bincount`` and the top-1 class painted, one mask at a time, largest first.
- :func:`reference_engine`: SSA-engine as the original ran it, every model at batch size 1 per
  mask in float32, on the same loaded models as the project's batched engine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils


def reference_vote_and_paint(rles: list[dict], class_map: torch.Tensor) -> torch.Tensor:
    """Per-mask voting and painting as the original did.

    Args:
        rles: COCO RLEs of the masks (``size`` and ``counts``).
        class_map: (H, W) int64 class ids, on the device the original ran on.

    Returns:
        (H, W) painted class map.
    """
    out = class_map.clone()
    order = sorted(range(len(rles)), key=lambda i: -int(mask_utils.area(rles[i])))
    for i in order:
        valid = torch.from_numpy(mask_utils.decode(rles[i])).bool().to(class_map.device)
        proposed = class_map[valid]
        if proposed.numel() == 0:
            continue
        top1 = torch.bincount(proposed.flatten()).topk(1).indices
        out[valid] = top1
    return out


# ---------------------------------------------------------------------------------------------
# SSA-engine, per mask (the original's ``semantic_annotation_pipeline`` of SSA-engine)


def imcrop(image: np.ndarray, bbox_xywh, scale: float) -> np.ndarray:
    """``mmcv.imcrop`` of one box scaled about its centre, clipped to the image (inclusive ends)."""
    h, w = image.shape[:2]
    x, y, bw, bh = (float(v) for v in bbox_xywh)
    x1, y1, x2, y2 = x, y, x + bw, y + bh
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    sw, sh = (x2 - x1 + 1) * scale, (y2 - y1 + 1) * scale
    x1, x2 = cx - (sw - 1) * 0.5, cx + (sw - 1) * 0.5
    y1, y2 = cy - (sh - 1) * 0.5, cy + (sh - 1) * 0.5
    x1, x2 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(x2), 0, w - 1))
    y1, y2 = int(np.clip(np.floor(y1), 0, h - 1)), int(np.clip(np.floor(y2), 0, h - 1))
    return image[y1 : y2 + 1, x1 : x2 + 1]


@torch.no_grad()
def reference_oneformer(branch, image: Image.Image) -> torch.Tensor:
    """The original's ``oneformer_*_segmentation``: processor, model, transformers' post-process."""
    inputs = branch.processor(images=image, task_inputs=["semantic"], return_tensors="pt")
    inputs = {k: v.to(branch.device) for k, v in inputs.items() if torch.is_tensor(v)}
    outputs = branch.model(**inputs)
    return branch.processor.post_process_semantic_segmentation(
        outputs, target_sizes=[image.size[::-1]]
    )[0]


@torch.no_grad()
def reference_caption(captioner, patch: np.ndarray, max_new_tokens: int) -> str:
    """The original's ``open_vocabulary_classification_blip`` (the caption part), batch 1."""
    inputs = captioner.processor(Image.fromarray(patch), return_tensors="pt").to(captioner.device)
    out = captioner.model.generate(**inputs, max_new_tokens=max_new_tokens)
    return captioner.processor.decode(out[0], skip_special_tokens=True)


@torch.no_grad()
def reference_clip(clip, preprocess, patch: np.ndarray, names: list[str], top_k: int) -> list:
    """The original's ``clip_classification``: image and every candidate text, every mask."""
    image = preprocess(Image.fromarray(patch))[None].to(clip.device)
    text = clip.tokenizer(names).to(clip.device)
    image_features = clip.model.encode_image(image)
    text_features = clip.model.encode_text(text)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    probs = (clip.model.logit_scale.exp() * image_features @ text_features.T).softmax(dim=1)
    return [names[i] for i in probs.topk(top_k, dim=1).indices[0].tolist()]


@torch.no_grad()
def reference_clipseg(decider, patch: np.ndarray, names: list[str]) -> torch.Tensor:
    """The original's ``clipseg_segmentation``: the crop repeated per name, resized to 512x512.

    Returns the (len(names), 512, 512) logits. The original resized them to the processor's
    input size and indexed them with the crop's own mask, which only works when both agree;
    the mask is resized to the logits instead (nearest), as the project's decider does.
    """
    inputs = decider.processor(
        text=names, images=[Image.fromarray(patch)] * len(names), padding=True, return_tensors="pt"
    ).to(decider.device)
    inputs["pixel_values"] = F.interpolate(
        inputs["pixel_values"], size=(512, 512), mode="bilinear", align_corners=False
    )
    return decider.model(**inputs).logits.reshape(len(names), *inputs["pixel_values"].shape[-2:])


def reference_engine(
    models,
    image: np.ndarray,
    rles: list[dict],
    top_k: int = 3,
    max_new_tokens: int = 20,
    timings: dict | None = None,
) -> list[dict]:
    """SSA-engine as the original ran it: every model at batch size 1, per mask, in fp32.

    Per image: both OneFormers once. Per mask (RLE decoded with pycocotools): top-1 ADE20K and
    COCO names by bincount, crops at 1.2x / 1.6x / 1.6x of the box (``mmcv.imcrop``), a BLIP
    caption of the 1.6x crop, spaCy noun phrases of it, CLIP over the union of the names on the
    1.2x crop (top-k), CLIPSeg on the 1.6x crop with the top-k names, the name winning most of
    the mask's pixels.

    Args:
        models: ``fiftyone_ssa.labelling.engine.EngineModels`` loaded in float32 (the same models the
            batched engine uses).
        image: (H, W, 3) uint8 RGB.
        rles: the masks as COCO RLEs.
        top_k: proposals per mask.
        max_new_tokens: BLIP's caption length limit.
        timings: seconds per step are added to it (keys: decode, ade, coco, captioner, nouns,
            clip, clipseg).

    Returns:
        One dict per mask: ``class_name``, ``class_proposals``, ``caption``.
    """
    import open_clip

    from fiftyone_ssa.core.vocabulary import refine_coco_name

    timings = {} if timings is None else timings
    clock = _Clock(timings, models.device)
    pil = Image.fromarray(image)
    with clock("ade"):
        ade_map = reference_oneformer(models.ade, pil)
    with clock("coco"):
        coco_map = reference_oneformer(models.coco, pil)
    visual = models.clip.model.visual
    config = open_clip.get_model_preprocess_cfg(models.clip.model)
    preprocess = open_clip.image_transform(
        visual.image_size, is_train=False, mean=config.get("mean"), std=config.get("std")
    )
    results = []
    for rle in rles:
        with clock("decode"):
            valid = torch.from_numpy(mask_utils.decode(rle)).bool().to(ade_map.device)
            bbox = mask_utils.toBbox(rle)
        with clock("ade"):
            ade_id = torch.bincount(ade_map[valid].flatten()).topk(1).indices.item()
        with clock("coco"):
            coco_id = torch.bincount(coco_map[valid].flatten()).topk(1).indices.item()
        names = {
            models.ade.classes.get(ade_id, str(ade_id)),
            refine_coco_name(models.coco.classes.get(coco_id, str(coco_id))),
        }
        patch_small = imcrop(image, bbox, 1.2)
        patch_large = imcrop(image, bbox, 1.6)
        valid_huge = imcrop(valid.cpu().numpy(), bbox, 1.6)
        with clock("captioner"):
            caption = reference_caption(models.captioner, patch_large, max_new_tokens)
        with clock("nouns"):
            phrases = models.nouns.extract([caption])[0]
        candidates = list(names | set(phrases))
        k = min(top_k, len(candidates))
        with clock("clip"):
            proposals = reference_clip(models.clip, preprocess, patch_small, candidates, k)
        with clock("clipseg"):
            ids = reference_clipseg(models.clipseg, patch_large, proposals).argmax(0)
            crop_mask = torch.from_numpy(valid_huge).to(ids.device)[None, None].float()
            crop_mask = F.interpolate(crop_mask, size=ids.shape, mode="nearest-exact")[0, 0] > 0
            winner = torch.bincount(ids[crop_mask].flatten()).topk(1)
        name = proposals[winner.indices.item()] if len(proposals) > 1 else proposals[0]
        results.append({"class_name": name, "class_proposals": proposals, "caption": caption})
    return results


class _Clock:
    """Adds the seconds spent in ``with clock(key):`` blocks to ``timings[key]``."""

    def __init__(self, timings: dict, device):
        self.timings = timings
        self.device = torch.device(device)

    @contextmanager
    def __call__(self, key: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start
