"""Semantic branches: per-pixel class maps at full image resolution.

A branch takes a batch of RGB images and returns one (H, W) int64 class map per image on its
device, with ``classes`` mapping ids to names. Model libraries are imported when a branch is
built, never at module import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fiftyone_ssa.core.upsample import upsample_argmax
from fiftyone_ssa.models.pretrained import default_device, load_pretrained
from fiftyone_ssa.models.semantic.clipseg_text import clipseg_text_embeddings

# Our images are always (H, W, 3): without this, image processors guess the channel axis
# from the shape and take a 1-pixel-high (1, W, 3) or (3, 3, 3) image for channels-first.
CHANNELS_LAST = {"input_data_format": "channels_last"}


class SemanticBranch:
    """Base class of semantic branches.

    Attributes:
        name: how the branch was asked for (preset, id, path, ``field:<name>``).
        classes: class id -> class name.
        device: where the class maps are returned.
    """

    name: str = ""
    classes: dict[int, str]
    device: torch.device = torch.device("cpu")

    @property
    def num_classes(self) -> int:
        """One more than the largest class id."""
        return max(self.classes, default=-1) + 1

    def predict(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Class maps of a batch of images.

        Args:
            images: B arrays of (H_i, W_i, 3) uint8 RGB.

        Returns:
            B tensors of (H_i, W_i) int64 class ids, on ``self.device``.
        """
        raise NotImplementedError


def _holds_class_ids(class_map: torch.Tensor) -> bool:
    """Whether every value of a map is a whole number >= 0 (a bool map holds ids 0 and 1)."""
    if class_map.is_complex():
        return False
    if class_map.is_floating_point():
        return bool(((class_map >= 0) & (class_map == class_map.round())).all())
    return class_map.numel() == 0 or int(class_map.long().min()) >= 0


def _odd_value(class_map: torch.Tensor) -> float:
    """One value of a map that is not a class id."""
    values = class_map.flatten().double()
    odd = (values < 0) | (values != values.round())
    return values[odd][0].item() if bool(odd.any()) else values[0].item()


class CallableSemanticBranch(SemanticBranch):
    """Wraps any Python callable ``image -> (class map, id -> name)``.

    Args:
        fn: called with an (H, W, 3) uint8 RGB array; returns an (H, W) integer array or
            tensor of class ids and a dict of id -> name.
        device: where the class maps are returned.
        name: a display name.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], tuple],
        device: str | torch.device | None = None,
        name: str | None = None,
    ):
        if not callable(fn):
            raise ValueError(f"Expected a callable, but got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.classes = {}
        self.device = torch.device(device) if device else default_device()

    def predict(self, images):
        maps = []
        for image in images:
            class_map, classes = self.fn(image)
            class_map = torch.as_tensor(
                np.asarray(class_map) if not torch.is_tensor(class_map) else class_map
            )
            if tuple(class_map.shape) != image.shape[:2]:
                raise ValueError(
                    f"Expected the callable's class map to be {image.shape[:2]}, but got "
                    f"{tuple(class_map.shape)}"
                )
            if not _holds_class_ids(class_map):
                raise ValueError(
                    f"Expected the callable's class map to hold class ids (integers >= 0), but "
                    f"got {class_map.dtype} values such as {_odd_value(class_map)}: return the "
                    "argmax of scores, not the scores"
                )
            class_map = class_map.to(self.device, torch.int64)
            self.classes.update({int(k): str(v) for k, v in classes.items()})
            maps.append(class_map)
        return maps


class _PretrainedBranch(SemanticBranch):
    """A branch backed by a transformers model and processor saved with ``save_pretrained``."""

    def _load(self, path, device, half: bool, processor_cls, model_cls) -> None:
        """Loads processor and model from ``path`` onto the device (bfloat16 on CUDA if ``half``).

        Raises:
            ValueError: one line, whatever went wrong (config, weights, shapes).
        """
        self.path = Path(path)
        self.name = str(path)
        self.device = torch.device(device) if device else default_device()
        self.processor, self.model = load_pretrained(
            self.path, processor_cls, model_cls, "semantic segmentation", complete=True
        )
        self.model.to(self.device).eval()
        self.dtype = torch.bfloat16 if (half and self.device.type == "cuda") else torch.float32
        self.classes = {int(k): str(v) for k, v in self.model.config.id2label.items()}


class TransformersSemanticBranch(_PretrainedBranch):
    """A transformers semantic segmentation model (Segformer, BEiT, DPT, UperNet, ...).

    Uses the model's own image processor for resizing and normalisation, upsamples the logits
    bilinearly to each image's size and takes the argmax (strip by strip, bounded memory).

    Args:
        path: a local directory saved with ``save_pretrained`` (config, weights, processor).
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    def __init__(self, path: str | os.PathLike, device=None, half: bool = True):
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        self._load(path, device, half, AutoImageProcessor, AutoModelForSemanticSegmentation)

    @torch.no_grad()
    def predict(self, images):
        inputs = self.processor(images=list(images), return_tensors="pt", **CHANNELS_LAST)
        pixels = inputs["pixel_values"].to(self.device)
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(pixel_values=pixels).logits
        return [
            upsample_argmax(logits[i].float(), image.shape[:2]) for i, image in enumerate(images)
        ]


class OneFormerSemanticBranch(_PretrainedBranch):
    """OneFormer in its semantic task: per-class scores from query classes and masks.

    Scores are ``sum_q softmax(class_q)[c] * sigmoid(mask_q)`` (transformers' own
    post-processing), upsampled bilinearly to the image size; images run one at a time
    because the processor pads batches of different sizes.

    Args:
        path: a local directory saved with ``save_pretrained`` (model and processor).
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    def __init__(self, path: str | os.PathLike, device=None, half: bool = True):
        from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

        self._load(path, device, half, OneFormerProcessor, OneFormerForUniversalSegmentation)

    @torch.no_grad()
    def class_scores(self, image: np.ndarray) -> torch.Tensor:
        """Low-resolution class scores of one image: (C, h, w) float32."""
        inputs = self.processor(
            images=[image], task_inputs=["semantic"], return_tensors="pt", **CHANNELS_LAST
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items() if torch.is_tensor(v)}
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(
                pixel_values=inputs["pixel_values"],
                pixel_mask=inputs.get("pixel_mask"),
                task_inputs=inputs["task_inputs"],
            )
        classes = out.class_queries_logits[0].float().softmax(-1)[:, :-1]
        masks = out.masks_queries_logits[0].float().sigmoid()
        return torch.einsum("qc,qhw->chw", classes, masks)

    def predict(self, images):
        return [upsample_argmax(self.class_scores(image), image.shape[:2]) for image in images]


class CLIPSegSemanticBranch(_PretrainedBranch):
    """CLIPSeg with a user-given class list (open vocabulary): argmax over class prompts.

    Args:
        path: a local directory saved with ``save_pretrained`` (model and processor).
        classes: the class names; id i is ``classes[i]``.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    def __init__(
        self, path: str | os.PathLike, classes: Sequence[str], device=None, half: bool = True
    ):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        if isinstance(classes, (str, dict)):
            raise ValueError(
                f"Expected `classes` to be a list of class names for CLIPSeg, but got {classes!r}"
            )
        names = [str(c).strip() for c in (classes or [])]
        if not names or not all(names):
            raise ValueError(
                "Expected `classes` to be a non-empty list of class names for CLIPSeg, but got "
                f"{classes!r}"
            )
        self._load(path, device, half, CLIPSegProcessor, CLIPSegForImageSegmentation)
        self.classes = dict(enumerate(names))
        self.text_embeds = clipseg_text_embeddings(self.model, self.processor.tokenizer, names)

    @torch.no_grad()
    def predict(self, images):
        names = list(self.classes.values())
        pixels = self.processor.image_processor(
            images=list(images), return_tensors="pt", **CHANNELS_LAST
        )
        pixels = pixels["pixel_values"].to(self.device)
        maps = []
        for i, image in enumerate(images):
            batch = pixels[i : i + 1].expand(len(names), -1, -1, -1)
            with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
                logits = self.model(
                    pixel_values=batch, conditional_embeddings=self.text_embeds
                ).logits
            logits = logits.float().reshape(len(names), *logits.shape[-2:])
            maps.append(upsample_argmax(logits, image.shape[:2]))
        return maps
