"""SAM 3 with a user's class list as a semantic branch: one text concept per class.

SAM 3 (``facebook/sam3``) segments every instance of a concept named by a short noun phrase and
also gives, per concept, a semantic map: ``Sam3Processor.post_process_semantic_segmentation``
turns the model's ``semantic_seg`` logits into per-pixel probabilities (a sigmoid, resized
bilinearly to the image) and binarises them at ``threshold`` (0.5). This branch runs that for
every class and merges the concepts into one class map:

- **overlaps**: a pixel takes the class whose concept has the highest probability there (ties:
  the lower id);
- **uncovered pixels** (no concept's probability above ``threshold``, i.e. every concept's own
  binarised map says 0 there) take the background id 0, named ``"background"``.

Class ids: with a list ``["cat", "dog"]`` the ids are 1, 2, ... in list order (0 is the
background); with a mapping id -> name (a Segmentation field's ``mask_targets``) the ids are
kept, and id 0, if present, names the background instead of being prompted.

The image is encoded once and every concept reuses its features (``vision_embeds``); the
concepts' text features are computed once per branch. The merge is done on the model's
288 x 288 probabilities and resized strip by strip
(:func:`~fiftyone_ssa.core.upsample.upsample_argmax`): the same map as resizing every
concept's probabilities to the image and comparing them there, without a (C, H, W) tensor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fiftyone_ssa.core.upsample import upsample_argmax
from fiftyone_ssa.models.semantic.branches import _PretrainedBranch

BACKGROUND = "background"

# Concepts run through the detector together, sharing one image's features.
DEFAULT_CONCEPT_BATCH = 16

# Text features kept per model (an open vocabulary would otherwise grow without bound).
MAX_CACHED_NAMES = 4096


def concept_classes(classes: Sequence[str] | Mapping[int, str]) -> dict[int, str]:
    """The branch's class ids of a class list or mapping (see the module docstring).

    Args:
        classes: class names (ids 1, 2, ... in order) or a mapping id -> name (ids kept; id 0,
            if present, is the background's name).

    Returns:
        id -> name, id 0 the background.

    Raises:
        ValueError: no class, an empty or repeated name, a negative id, or a list naming the
            background.
    """
    if isinstance(classes, str) or classes is None:
        raise ValueError(
            f"Expected `classes` to be a list of class names for SAM 3, but got {classes!r}"
        )
    if isinstance(classes, Mapping):
        named = {int(k): str(v).strip() for k, v in classes.items()}
        background = named.pop(0, BACKGROUND) or BACKGROUND
    else:
        named = {i + 1: str(c).strip() for i, c in enumerate(classes)}
        background = BACKGROUND
        if any(name.lower() == BACKGROUND for name in named.values()):
            raise ValueError(
                f"{BACKGROUND!r} is SAM 3's class 0 (pixels no concept covers): leave it out of "
                "`classes`"
            )
    names = list(named.values())
    if not names:
        raise ValueError("Expected at least one class name for SAM 3, but got none")
    if not all(names):
        raise ValueError(f"Expected non-empty class names for SAM 3, but got {classes!r}")
    if min(named) < 0:
        raise ValueError(f"Expected class ids >= 0, but got {min(named)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Expected distinct class names for SAM 3, but {repeated[0]!r} repeats")
    return {0: background, **dict(sorted(named.items()))}


def check_threshold(threshold: float) -> None:
    """ValueError unless ``threshold`` is a probability a concept can exceed: [0, 1)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"Expected `threshold` in [0, 1), but got {threshold}")


def merge_concept_scores(
    probabilities: torch.Tensor, threshold: float, size: tuple[int, int]
) -> torch.Tensor:
    """Channel indices of merged concept probabilities at ``size``: 0 where no concept's
    probability exceeds ``threshold``, else 1 + the index of the most probable concept.

    Args:
        probabilities: (C, h, w) float per-concept probabilities.
        threshold: a concept covers a pixel where its probability is above this.
        size: (H, W) of the output; probabilities are resized bilinearly to it.

    Returns:
        (H, W) int64 indices in [0, C].
    """
    # Scores minus the threshold, beside a zero "background" channel: bilinear resizing keeps
    # the zero exact and commutes with the shift, so the argmax is the rule at full size.
    shifted = probabilities.float() - threshold
    scores = torch.cat([torch.zeros_like(shifted[:1]), shifted])
    return upsample_argmax(scores, size)


class Sam3Concepts:
    """SAM 3's per-concept semantic probabilities: images encoded once, names encoded once.

    Shared by the semantic branch (a fixed class list) and SSA-engine's SAM 3 decider (each
    image's proposals).

    Args:
        processor: a ``Sam3Processor``.
        model: a ``Sam3Model`` on ``device``.
        device: where the model runs.
        dtype: autocast dtype (float32: none).
        concept_batch: concepts run through the detector at once.
    """

    def __init__(self, processor, model, device: torch.device, dtype, concept_batch: int):
        if concept_batch < 1:
            raise ValueError(f"Expected `concept_batch` to be >= 1, but got {concept_batch}")
        self.processor, self.model = processor, model
        self.device, self.dtype = device, dtype
        self.concept_batch = int(concept_batch)
        self._texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _autocast(self):
        return torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def text_features(self, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 3's text features of names, each distinct name encoded once.

        Returns:
            ((T, L, D) features, (T, L) attention mask) on the device.
        """
        missing = list(dict.fromkeys(n for n in names if n not in self._texts))
        if len(self._texts) + len(missing) > MAX_CACHED_NAMES:
            self._texts.clear()
            missing = list(dict.fromkeys(names))
        if missing:
            tokens = self.processor(text=missing, return_tensors="pt")
            input_ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device)
            with self._autocast():
                features = self.model.get_text_features(input_ids=input_ids, attention_mask=mask)
            self._texts.update(zip(missing, zip(features.pooler_output, mask)))
        features, mask = zip(*(self._texts[n] for n in names))
        return torch.stack(features), torch.stack(mask)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray | torch.Tensor) -> Any:
        """SAM 3's vision features of one image ((H, W, 3) uint8 array or (3, H, W) uint8
        tensor), through the processor's resize and normalisation."""
        layout = "channels_first" if torch.is_tensor(image) else "channels_last"
        pixels = self.processor.image_processor(
            images=[image], return_tensors="pt", input_data_format=layout
        )["pixel_values"].to(self.device)
        with self._autocast():
            return self.model.get_vision_features(pixel_values=pixels)

    @torch.no_grad()
    def probabilities(self, vision: Any, names: Sequence[str]) -> torch.Tensor:
        """Every name's probabilities on one encoded image, before the resize to the image.

        Args:
            vision: :meth:`encode_image`'s output.
            names: T concept names.

        Returns:
            (T, h, w) float32 (h = w = 288 for SAM 3): the processor's
            ``post_process_semantic_segmentation`` scores, one concept per name.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features, mask = self.text_features(names)
        scores = []
        for first in range(0, len(names), self.concept_batch):
            last = min(first + self.concept_batch, len(names))
            count = last - first
            embeds = type(vision)(
                **{
                    key: tuple(t.expand(count, *t.shape[1:]) for t in value)
                    if isinstance(value, tuple)
                    else value.expand(count, *value.shape[1:])
                    for key, value in vision.items()
                    if value is not None
                }
            )
            with self._autocast():
                outputs = self.model(
                    vision_embeds=embeds,
                    text_embeds=BaseModelOutputWithPooling(pooler_output=features[first:last]),
                    attention_mask=mask[first:last],
                )
            outputs.semantic_seg = outputs.semantic_seg.float()
            results = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=None, return_segmentation_scores=True
            )
            scores.extend(result.segmentation_scores[0] for result in results)
        return torch.stack(scores)


class Sam3ConceptSemanticBranch(_PretrainedBranch):
    """SAM 3 (``Sam3Model`` + ``Sam3Processor``) segmenting a class list as text concepts.

    Args:
        path: a local directory in ``facebook/sam3``'s layout (``config.json`` of model_type
            ``sam3_video`` or ``sam3``, weights, ``processor_config.json``, CLIP tokenizer).
        classes: class names (ids 1..N) or a mapping id -> name; see :func:`concept_classes`.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
        threshold: the processor's binarisation threshold; below it a concept does not cover a
            pixel.
        concept_batch: concepts run through the detector at once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        classes: Sequence[str] | Mapping[int, str],
        device=None,
        half: bool = True,
        threshold: float = 0.5,
        concept_batch: int = DEFAULT_CONCEPT_BATCH,
    ):
        from transformers import Sam3Model, Sam3Processor

        resolved = concept_classes(classes)
        check_threshold(threshold)
        if concept_batch < 1:
            raise ValueError(f"Expected `concept_batch` to be >= 1, but got {concept_batch}")
        self._load(path, device, half, Sam3Processor, Sam3Model)
        self.classes = resolved
        self.threshold = float(threshold)
        self.concepts = Sam3Concepts(
            self.processor, self.model, self.device, self.dtype, concept_batch
        )
        self.names = list(resolved.values())[1:]
        self.concepts.text_features(self.names)  # once, before any image
        self.concept_ids = torch.tensor([0, *list(resolved)[1:]], device=self.device)

    def concept_probabilities(self, image: np.ndarray) -> torch.Tensor:
        """Every class's probabilities on one (H, W, 3) uint8 image: (C, h, w) float32, class
        i + 1 in row i (see :meth:`Sam3Concepts.probabilities`)."""
        return self.concepts.probabilities(self.concepts.encode_image(image), self.names)

    def predict(self, images):
        maps = []
        for image in images:
            indices = merge_concept_scores(
                self.concept_probabilities(image), self.threshold, image.shape[:2]
            )
            maps.append(self.concept_ids[indices])
        return maps
