"""Mask2Former and EoMT as semantic branches: class maps from query classes and masks.

Both are "universal" segmenters: Q queries, each with class logits (C + 1, the last one "no
object") and a mask. Their image processors turn those into a semantic map
(``post_process_semantic_segmentation``): per-class scores ``sum_q softmax(class_q)[c] *
sigmoid(mask_q)`` at the processor's working resolution, resized bilinearly to the image and
arg-maxed. Panoptic checkpoints (``*-coco-panoptic``, ``coco_panoptic_eomt_*``) give their
semantic map the same way, from the same class and mask scores.

The branches here run the processor's own post-processing up to its last step and do that last
step (bilinear resize to the image, argmax) strip by strip with
:func:`~fiftyone_ssa.core.upsample.upsample_argmax`: the same class map, without a (C, H, W)
float tensor per image (7 GB for 150 classes at 12 megapixels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from fiftyone_ssa.core.upsample import upsample_argmax
from fiftyone_ssa.models.semantic.branches import CHANNELS_LAST, _PretrainedBranch


class UniversalSemanticBranch(_PretrainedBranch):
    """Base of the query-based branches: batching, autocast and the final resize.

    Subclasses name their processor and model classes and say how the processor's
    post-processing gives low-resolution class scores (:meth:`_scores`).

    Args:
        path: a local directory with the model's ``config.json``, weights and
            ``preprocessor_config.json``.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    def __init__(self, path: str | os.PathLike, device=None, half: bool = True):
        processor_cls, model_cls = self._classes()
        # The explicit processor class, whatever image_processor_type the file names (the hub's
        # facebook/mask2former-* files name "MaskFormerImageProcessor" in some repositories).
        self._load(path, device, half, processor_cls, model_cls)

    @staticmethod
    def _classes() -> tuple[type, type]:
        """``(image processor class, model class)``."""
        raise NotImplementedError

    def _forward(self, images: Sequence[np.ndarray]):
        """The processor's inputs and the model's outputs (float32) for a batch of images."""
        inputs = self.processor(images=list(images), return_tensors="pt", **CHANNELS_LAST)
        tensors = {k: v.to(self.device) for k, v in inputs.items() if torch.is_tensor(v)}
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            outputs = self.model(**tensors, **self._extra_inputs(inputs))
        outputs.class_queries_logits = outputs.class_queries_logits.float()
        outputs.masks_queries_logits = outputs.masks_queries_logits.float()
        return inputs, outputs

    def _extra_inputs(self, inputs) -> dict:
        """Non-tensor processor outputs the model takes too."""
        return {}

    def _groups(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of the images that run as one batch (default: all of them)."""
        return [list(range(len(images)))]

    @staticmethod
    def _groups_by_shape(images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of the images of each (H, W), in order of first appearance."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape[:2]), []).append(i)
        return list(by_shape.values())

    def _scores(self, inputs, outputs, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Class scores of each image before the processor's last resize.

        Returns:
            B tensors of (C, h_i, w_i) float32 scores, covering image i exactly: resized
            bilinearly to (H_i, W_i) and arg-maxed they give the processor's semantic map.
        """
        raise NotImplementedError

    @torch.no_grad()
    def class_scores(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Low-resolution class scores of a batch of images.

        Args:
            images: B arrays of (H_i, W_i, 3) uint8 RGB.

        Returns:
            B tensors of (C, h_i, w_i) float32 scores on ``self.device`` (see :meth:`_scores`).
        """
        scores: list[torch.Tensor | None] = [None] * len(images)
        for group in self._groups(images):
            batch = [images[i] for i in group]
            inputs, outputs = self._forward(batch)
            for i, image_scores in zip(group, self._scores(inputs, outputs, batch)):
                scores[i] = image_scores
        return scores

    def predict(self, images):
        return [
            upsample_argmax(scores, image.shape[:2])
            for scores, image in zip(self.class_scores(images), images)
        ]


class Mask2FormerSemanticBranch(UniversalSemanticBranch):
    """Mask2Former (``facebook/mask2former-swin-*``): semantic, and panoptic checkpoints'
    semantic maps.

    The processor resizes every image to its ``size`` (384 x 384 in the hub's repositories)
    and ``post_process_semantic_segmentation`` upsamples the masks to 384 x 384 before taking
    class scores. With such a fixed size any images batch together; a processor that keeps
    aspect ratios (``shortest_edge`` / ``longest_edge``) pads a batch to its largest image,
    which the post-processing does not crop, so images then run in groups of one size.

    Args:
        path: a local directory with the model's ``config.json``, weights and
            ``preprocessor_config.json``.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    @staticmethod
    def _classes():
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        return Mask2FormerImageProcessor, Mask2FormerForUniversalSegmentation

    def _groups(self, images):
        size = self.processor.size
        if size.height and size.width:  # every image resized to one size: nothing padded
            return [list(range(len(images)))]
        return self._groups_by_shape(images)

    def _scores(self, inputs, outputs, images):
        results = self.processor.post_process_semantic_segmentation(
            outputs, target_sizes=None, return_segmentation_scores=True
        )
        return [result.segmentation_scores for result in results]


class EomtSemanticBranch(UniversalSemanticBranch):
    """EoMT (``tue-mps/*_eomt_*``): a plain ViT whose last blocks also carry the queries.

    Semantic checkpoints split the resized image into overlapping square windows
    (``do_split_image``) whose scores the post-processing averages; panoptic checkpoints pad
    the resized image to a square (``do_pad``). Either way any images batch together
    (otherwise images run in groups of one size).

    The padded case keeps the image's region only: transformers'
    ``post_process_semantic_segmentation`` resizes the whole padded square to the image (its
    panoptic and instance post-processing crop, with ``unpad_image``); this branch crops as
    those do, so the class map lines up with the image.

    Args:
        path: a local directory with the model's ``config.json``, weights and
            ``preprocessor_config.json``.
        device: torch device; CUDA when available by default.
        half: run in bfloat16 on CUDA.
    """

    @staticmethod
    def _classes():
        from transformers import EomtForUniversalSegmentation, EomtImageProcessor

        return EomtImageProcessor, EomtForUniversalSegmentation

    def _extra_inputs(self, inputs):
        return {"patch_offsets": inputs.get("patch_offsets") or None}

    def _groups(self, images):
        if self.processor.do_split_image or self.processor.do_pad:
            return [list(range(len(images)))]
        return self._groups_by_shape(images)  # resized, not padded: sizes differ

    def resized_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) the processor resizes an image of ``image_size`` to, before splitting
        or padding."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        size = self.processor.size
        return tuple(
            get_size_with_aspect_ratio(image_size, size["shortest_edge"], size["longest_edge"])
        )

    def _scores(self, inputs, outputs, images):
        resized = [self.resized_size(image.shape[:2]) for image in images]
        if outputs.patch_offsets:
            # Windows averaged on the resized image's canvas; resizing it to its own size is
            # the identity, so these are the scores before the last resize.
            results = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=resized, return_segmentation_scores=True
            )
            return [result.segmentation_scores for result in results]
        size = self.processor.size
        square = (size["shortest_edge"], size["longest_edge"] or size["shortest_edge"])
        results = self.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[square] * len(images), return_segmentation_scores=True
        )
        if not self.processor.do_pad:  # the square is the whole (stretched) image
            return [result.segmentation_scores for result in results]
        return [result.segmentation_scores[:, :h, :w] for result, (h, w) in zip(results, resized)]
