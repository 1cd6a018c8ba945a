"""SSA-engine's models and its batched labelling core (no FiftyOne).

Per image (the original SSA-engine's algorithm; README, "SSA-engine"): the top-1 ADE20K and refined COCO names of each
mask from two OneFormer class maps; a BLIP caption of the mask's 1.6x crop and its spaCy noun
phrases; CLIP ranks the de-duplicated candidates on the 1.2x crop and keeps the top-k
(``class_proposals``); CLIPSeg picks the proposal that wins most of the mask's pixels in the
1.6x crop (``class_name``). Every model runs batched across all masks of all images of a batch;
no model is called per mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fiftyone_ssa.core.crops import mask_boxes_xywh, scale_boxes
from fiftyone_ssa.core.doubt import clip_margins
from fiftyone_ssa.core.vocabulary import build_candidates, check_vocabulary, refine_coco_name
from fiftyone_ssa.core.voting import vote_mask_classes
from fiftyone_ssa.fields import DEFAULT_SPACY_MODEL
from fiftyone_ssa.models import weights
from fiftyone_ssa.models.engine.captioner import BlipCaptioner
from fiftyone_ssa.models.engine.clip_filter import ClipFilter
from fiftyone_ssa.models.engine.clipseg_decider import ClipSegDecider
from fiftyone_ssa.models.engine.nouns import NounExtractor
from fiftyone_ssa.models.engine.sam3_decider import Sam3Decider
from fiftyone_ssa.models.registry import create_branch
from fiftyone_ssa.models.semantic.branches import (
    SemanticBranch,
    default_device,
)
from fiftyone_ssa.models.weights import DEFAULT_ENGINE_MODELS, LIGHT_ENGINE_MODELS

# Crop scales about the mask's box centre (the original SSA-engine's).
CLIP_CROP_SCALE = 1.2
CAPTION_CROP_SCALE = 1.6
CLIPSEG_CROP_SCALE = 1.6

# The models that can pick each mask's class among its proposals, and their default presets.
DECIDERS = {"clipseg": "CLIPSeg on the 1.6x crop", "sam3": "SAM 3 concepts on the whole image"}
DEFAULT_SAM3_MODEL = "sam3"


def engine_mask_generator_defaults(light: bool = False) -> dict:
    """SAM settings of SSA-engine: 32 points per side (16 light), no crop layers."""
    return {"points_per_side": 16 if light else 32, "crop_n_layers": 0}


def _model_dir(source: str | os.PathLike, task: str) -> Path:
    """The local directory of a preset, Hugging Face id or path for a ``task`` model."""
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name in weights.PRESETS or weights.looks_like_hf_id(name):
        return weights.resolve(name)
    valid = ", ".join(n for n, p in weights.PRESETS.items() if p.task == task)
    raise ValueError(
        f"unknown {task} model {name!r}: expected one of {valid}, a local directory or a "
        "Hugging Face id"
    )


@dataclass
class EngineModels:
    """The models of SSA-engine, loaded once per run.

    Attributes:
        ade: the ADE20K close-set branch (OneFormer by default; any semantic branch works).
        coco: the COCO panoptic close-set branch (names refined: ``wall-other-merged`` -> wall).
        captioner: BLIP.
        nouns: the spaCy noun-phrase extractor.
        clip: the CLIP candidate filter.
        decider: picks each mask's class among its proposals: CLIPSeg (the original's), or
            SAM 3 (``decider="sam3"``).
    """

    ade: SemanticBranch
    coco: SemanticBranch
    captioner: BlipCaptioner
    nouns: NounExtractor
    clip: ClipFilter
    decider: ClipSegDecider | Sam3Decider

    @property
    def clipseg(self) -> ClipSegDecider | Sam3Decider:
        """The decider (its name from when CLIPSeg was the only one)."""
        return self.decider

    @property
    def device(self) -> torch.device:
        """Where the crops and masks go (the CLIP filter's device)."""
        return self.clip.device

    @classmethod
    def load(
        cls,
        light: bool = False,
        device: str | torch.device | None = None,
        ade: Any = None,
        coco: Any = None,
        captioner: Any = None,
        clip: Any = None,
        clipseg: Any = None,
        spacy_model: Any = DEFAULT_SPACY_MODEL,
        clip_architecture: str | None = None,
        half: bool = True,
        crop_batch_size: int = 64,
        decider: str = "clipseg",
        sam3: Any = None,
    ) -> EngineModels:
        """Loads every model; each is a preset, Hugging Face id, local path or loaded instance.

        Args:
            light: the light models (OneFormer ADE20K Swin-T, BLIP base, CLIP ViT-B/32,
                CLIPSeg rd16) where a model is not given.
            device: torch device; CUDA when available by default.
            ade: ADE20K semantic branch (``create_branch`` names).
            coco: COCO panoptic semantic branch (``create_branch`` names).
            captioner: BLIP directory or preset.
            clip: open_clip preset, directory or checkpoint (see ``clip_architecture``).
            clipseg: CLIPSeg directory or preset.
            spacy_model: spaCy pipeline name, path, loaded ``Language`` or ``NounExtractor``.
            clip_architecture: open_clip model name of a CLIP checkpoint file.
            half: half precision on CUDA.
            crop_batch_size: crops per BLIP / CLIPSeg call (CLIP takes 4x as many).
            decider: ``"clipseg"`` or ``"sam3"`` (see :data:`DECIDERS`).
            sam3: SAM 3 directory or preset for ``decider="sam3"`` (default: ``sam3``).

        Raises:
            FileNotFoundError: a model whose weights are not in the models directory.
            ImportError: spaCy or its pipeline is missing.
            ValueError: a path that is not a model of the expected kind.
        """
        if decider not in DECIDERS:
            raise ValueError(
                f"Expected `decider` to be one of {list(DECIDERS)}, but got {decider!r}"
            )
        defaults = {
            **(LIGHT_ENGINE_MODELS if light else DEFAULT_ENGINE_MODELS),
            "sam3": DEFAULT_SAM3_MODEL,
        }
        chosen = {
            "ade": ade,
            "coco": coco,
            "captioner": captioner,
            "clip": clip,
            "clipseg": clipseg if decider == "clipseg" else sam3,
        }
        decider_role = "clipseg" if decider == "clipseg" else "sam3"
        chosen = {
            role: defaults[decider_role if role == "clipseg" else role] if v is None else v
            for role, v in chosen.items()
        }
        weights.check_present(chosen.values())  # fail before loading gigabytes
        ade, coco, captioner, clip, chosen_decider = chosen.values()
        device = torch.device(device) if device else default_device()
        # The cheap, most often missing one first: fail before loading gigabytes.
        nouns = (
            spacy_model if isinstance(spacy_model, NounExtractor) else NounExtractor(spacy_model)
        )

        def branch(source, role):
            source = source if source is not None else defaults[role]
            if isinstance(source, str) and source.startswith("field:"):
                raise ValueError(f"Expected a model for the {role} branch, but got {source!r}")
            return create_branch(source, kind="semantic", device=device)

        captioner = captioner if captioner is not None else defaults["captioner"]
        if not isinstance(captioner, BlipCaptioner):
            captioner = BlipCaptioner(
                _model_dir(captioner, "caption"),
                device=device,
                half=half,
                batch_size=crop_batch_size,
            )
        clip = clip if clip is not None else defaults["clip"]
        if not isinstance(clip, ClipFilter):
            clip = ClipFilter(
                clip,
                architecture=clip_architecture,
                device=device,
                half=half,
                batch_size=4 * crop_batch_size,
            )
        if isinstance(chosen_decider, (ClipSegDecider, Sam3Decider)):
            pass
        elif decider == "sam3":
            chosen_decider = Sam3Decider(
                _model_dir(chosen_decider, "semantic"), device=device, half=half
            )
        else:
            chosen_decider = ClipSegDecider(
                _model_dir(chosen_decider, "semantic"),
                device=device,
                half=half,
                batch_size=crop_batch_size,
            )
        return cls(branch(ade, "ade"), branch(coco, "coco"), captioner, nouns, clip, chosen_decider)


@dataclass
class MaskLabels:
    """SSA-engine's labels for the N masks of one image (lists of N entries).

    Attributes:
        class_names: CLIPSeg's choice among the proposals.
        class_proposals: CLIP's top-k candidates, best first.
        proposal_scores: CLIP probabilities of the proposals over the mask's candidates.
        confidence: the share of the mask's pixels its class wins in CLIPSeg's crop.
        captions: BLIP captions of the 1.6x crops.
        ade_names: top-1 ADE20K names.
        coco_names: top-1 COCO names, refined.
        candidates: the candidate lists CLIP ranked.
        clip_probability: CLIP's probability of the chosen name over the mask's candidates.
        clip_margin: that probability minus the best other candidate's, in [-1, 1]
            (negative when CLIP prefers another name).
        clip_agrees: whether CLIPSeg's pick is CLIP's top-1.
    """

    class_names: list[str]
    class_proposals: list[list[str]]
    proposal_scores: list[list[float]]
    confidence: list[float]
    captions: list[str]
    ade_names: list[str]
    coco_names: list[str]
    candidates: list[list[str]]
    clip_probability: list[float]
    clip_margin: list[float]
    clip_agrees: list[bool]


def _top1_names(
    branch: SemanticBranch, class_map: torch.Tensor, masks: torch.Tensor, refine=None
) -> list[str]:
    class_map = class_map.to(masks.device)
    top = int(class_map.max()) + 1 if class_map.numel() else 1
    labels = vote_mask_classes(masks, class_map, max(branch.num_classes, top)).labels.tolist()
    names = [branch.classes.get(c, str(c)) for c in labels]
    return [refine(n) for n in names] if refine else names


def label_masks(
    models: EngineModels,
    images: Sequence[np.ndarray],
    masks: Sequence[torch.Tensor],
    top_k: int = 3,
    vocabulary: Sequence[str] | None = None,
    vocabulary_mode: str = "add",
) -> list[MaskLabels]:
    """SSA-engine on a batch of images, every model batched across all their masks.

    Args:
        models: the loaded models.
        images: B arrays (H_i, W_i, 3) uint8 RGB.
        masks: B tensors (N_i, H_i, W_i) bool.
        top_k: proposals per mask (fewer when a mask has fewer candidates).
        vocabulary: user class names, added to every mask's candidates or, with
            ``vocabulary_mode="restrict"``, the only candidates.
        vocabulary_mode: ``"add"`` or ``"restrict"``.

    Returns:
        B :class:`MaskLabels`.
    """
    if top_k < 1:
        raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
    if len(images) != len(masks):
        raise ValueError(
            f"Expected one mask tensor per image, but got {len(masks)} for {len(images)} images"
        )
    vocabulary = check_vocabulary(vocabulary, vocabulary_mode)
    device = models.device
    tensors, masks_on_device = [], []
    for image, image_masks in zip(images, masks):
        if image_masks.dim() != 3 or tuple(image_masks.shape[1:]) != tuple(image.shape[:2]):
            raise ValueError(
                f"Expected masks of shape (N, {image.shape[0]}, {image.shape[1]}), "
                f"but got {tuple(image_masks.shape)}"
            )
        tensors.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device))
        masks_on_device.append(image_masks.to(device).bool())
    live = [i for i, m in enumerate(masks_on_device) if m.shape[0]]
    ade_maps = models.ade.predict([images[i] for i in live]) if live else []
    coco_maps = models.coco.predict([images[i] for i in live]) if live else []
    ade_names, coco_names, clip_boxes, large_boxes = [], [], [], []
    for i, image_masks in enumerate(masks_on_device):
        if i in live:
            ade_names.append(_top1_names(models.ade, ade_maps[live.index(i)], image_masks))
            coco_names.append(
                _top1_names(models.coco, coco_maps[live.index(i)], image_masks, refine_coco_name)
            )
        else:
            ade_names.append([])
            coco_names.append([])
        boxes = mask_boxes_xywh(image_masks)
        size = tuple(image_masks.shape[1:])
        clip_boxes.append(scale_boxes(boxes, CLIP_CROP_SCALE, size))
        large_boxes.append(scale_boxes(boxes, CAPTION_CROP_SCALE, size))
    # CLIPSeg reads the same 1.6x crop as BLIP.
    captions = models.captioner.caption(tensors, large_boxes)
    nouns = models.nouns.extract(captions)
    flat_ade = [n for names in ade_names for n in names]
    flat_coco = [n for names in coco_names for n in names]
    candidates = [
        build_candidates([a, c], phrases, vocabulary, vocabulary_mode) or [a or "object"]
        for a, c, phrases in zip(flat_ade, flat_coco, nouns)
    ]
    # At least two ranked names, so the chosen name's margin to the runner-up is known.
    ranked, ranked_scores = models.clip.top_k(tensors, clip_boxes, candidates, max(top_k, 2))
    proposals = [names[:top_k] for names in ranked]
    scores = [probs[:top_k] for probs in ranked_scores]
    decisions = models.decider.decide(tensors, large_boxes, masks_on_device, proposals)
    chosen = [d.name for d in decisions]
    clip_probability, clip_margin = clip_margins(chosen, ranked, ranked_scores)
    clip_agrees = [bool(names) and name == names[0] for name, names in zip(chosen, ranked)]
    results, start = [], 0
    for i, image_masks in enumerate(masks_on_device):
        stop = start + int(image_masks.shape[0])
        part = slice(start, stop)
        results.append(
            MaskLabels(
                class_names=[d.name for d in decisions[part]],
                class_proposals=proposals[part],
                proposal_scores=scores[part],
                confidence=[d.share for d in decisions[part]],
                captions=captions[part],
                ade_names=ade_names[i],
                coco_names=coco_names[i],
                candidates=candidates[part],
                clip_probability=clip_probability[part].tolist(),
                clip_margin=clip_margin[part].tolist(),
                clip_agrees=clip_agrees[part],
            )
        )
        start = stop
    return results
