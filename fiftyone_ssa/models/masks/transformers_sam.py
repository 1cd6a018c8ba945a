"""Automatic mask generation for the transformers SAM family: SAM 2 / 2.1, EdgeTAM, SAM-HQ and
SAM 3's tracker.

:class:`TransformersSamGenerator` is :class:`~fiftyone_ssa.models.masks.fast_generator.
FastMaskGenerator` (segment-anything's algorithm with the original SSA's settings: point grid,
predicted-IoU and stability filters, crop layers, box NMS within and between crops, small-region
removal) with the model-dependent steps taken from transformers:

- each crop goes through the model's own image processor (SAM 2 / EdgeTAM: stretched to 1024 x
  1024; SAM 3: stretched to 1008 x 1008; SAM-HQ: longest side 1024, padded) and
  ``get_image_embeddings`` once;
- the grid's points go in batches through the model's prompt encoder and mask decoder, in the
  coordinates the model's processor gives points (``Sam2Processor``: per axis to the square
  frame; ``SamProcessor``: the longest-side resize). SAM 2 / EdgeTAM / SAM 3 tracker decoders
  run as :class:`~fiftyone_ssa.models.masks.prompt_decoder.PromptBatchDecoder` (the image side of
  the two-way transformer once per crop, upsampling only for prompts with a mask that passes
  the IoU filter); SAM-HQ's, which adds an HQ token and the ViT's early features, runs as
  ``model(image_embeddings=..., input_points=..., multimask_output=True)``;
- the predicted-IoU filter runs on the decoder's outputs, before any upsampling;
- the surviving low-resolution logits are upsampled as the image processor's
  ``post_process_masks`` does (SAM 2: bilinear straight to the crop; SAM-HQ: to the padded
  frame, cropped, then to the crop), chunk by chunk, keeping only stability scores and boxes;
  full-resolution masks are materialised once, after NMS.

With one crop layer (``crop_n_layers=0``) and no small-region removal this gives the masks and
scores of transformers' ``pipeline("mask-generation")`` (which has no per-crop NMS, no
preference for smaller crops and no small-region step; its stability filter is ``>`` where
segment-anything's is ``>=``), for square images. For other images transformers' pipeline places
the SAM 2 point grid with the longest-side rule of SAM 1 while the SAM 2 model sees the image
stretched to a square; here the points follow ``Sam2Processor`` (the tests compare both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_ssa.models.masks.fast_generator import FastMaskGenerator
from fiftyone_ssa.models.masks.prompt_decoder import SAM2_DECODER_MODELS, PromptBatchDecoder

# config.json model_type -> the transformers class that runs its image path.
MODEL_CLASSES = {
    "sam2": "Sam2Model",
    "sam2_video": "Sam2Model",
    "edgetam": "EdgeTamModel",
    "edgetam_video": "EdgeTamModel",
    "sam_hq": "SamHQModel",
    # SAM 3's tracker (its interactive, SAM 2-like image path): facebook/sam3's config is a
    # sam3_video one holding detector and tracker; transformers renames the weights it reads.
    "sam3_video": "Sam3TrackerModel",
    "sam3_tracker": "Sam3TrackerModel",
    "sam3_tracker_video": "Sam3TrackerModel",
}


class TransformersSamGenerator(FastMaskGenerator):
    """segment-anything's automatic mask generator for a transformers SAM-family model.

    Args:
        model: a ``Sam2Model``, ``EdgeTamModel``, ``Sam3TrackerModel`` or ``SamHQModel``; its
            device is where everything runs.
        image_processor: the model's image processor (``Sam2ImageProcessor``,
            ``Sam3ImageProcessor`` or ``SamImageProcessor``), loaded from the same directory.
        **settings: :class:`FastMaskGenerator`'s settings (``points_per_side``,
            ``pred_iou_thresh``, ``crop_n_layers``, ...); ``mask_threshold`` defaults to 0.0,
            as the models' post-processing.

    Raises:
        ValueError: another model class, or settings :class:`FastMaskGenerator` refuses.
    """

    def __init__(self, model, image_processor, **settings) -> None:
        self.image_processor = image_processor
        size = dict(image_processor.size)
        # Sam2ImageProcessor: {"height": 1024, "width": 1024}, the image stretched to the frame;
        # SamImageProcessor: {"longest_edge": 1024}, then padded to pad_size.
        self._stretch = "longest_edge" not in size or size["longest_edge"] is None
        frame = size["height"] if self._stretch else size["longest_edge"]
        if self._stretch and size.get("width") != frame:
            raise ValueError(f"Expected a square image processor size, but got {size}")
        self._frame = int(frame)
        super().__init__(model, **settings)

    # ------------------------------------------------------------------ model hooks

    def _make_decoder(self, model):
        """SAM 2's decoder as a :class:`PromptBatchDecoder`; SAM-HQ's is the model itself."""
        name = type(model).__name__
        if name not in set(MODEL_CLASSES.values()):
            raise ValueError(
                f"Expected one of {', '.join(sorted(set(MODEL_CLASSES.values())))}, but got {name}"
            )
        return PromptBatchDecoder(model) if name in SAM2_DECODER_MODELS else model

    def _default_mask_threshold(self) -> float:
        return 0.0

    @property
    def _frame_size(self) -> int:
        return self._frame

    def _input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self._stretch:
            return self._frame, self._frame
        return super()._input_size(size)

    def _upsample(
        self, low_res: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        """``image_processor.post_process_masks`` without binarising.

        Args:
            low_res: (n, h, w) float decoder logits (256 x 256).
            input_size: (h, w) of the resized crop in the input frame.
            size: (H, W) of the crop.

        Returns:
            (n, H, W) float logits.
        """
        if self._stretch:
            return F.interpolate(low_res[:, None], size, mode="bilinear", align_corners=False)[:, 0]
        return super()._upsample(low_res, input_size, size)

    def _model_points(self, points: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        if not self._stretch:  # SamProcessor: the longest-side rule, as segment-anything
            return super()._model_points(points, size).float()
        scale = np.array([self._frame / size[1], self._frame / size[0]])  # Sam2Processor
        return torch.as_tensor(points * scale, dtype=torch.float32, device=self.device)

    def _embed(self, crop: np.ndarray):
        """The crop through the image processor and ``get_image_embeddings``.

        Returns:
            The model's embeddings (SAM 2 / EdgeTAM: a list of feature maps, the last (1, C,
            64, 64); SAM-HQ: (image embeddings (1, C, 64, 64), intermediate ViT embeddings))
            and the (h, w) of the resized crop in the input frame.
        """
        inputs = self.image_processor(
            images=crop, return_tensors="pt", input_data_format="channels_last"
        )
        pixels = inputs["pixel_values"].to(self.device)
        if "reshaped_input_sizes" in inputs:
            input_size = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        else:
            input_size = self._input_size(crop.shape[:2])
        with self._autocast():
            embeddings = self.model.get_image_embeddings(pixels)
        return embeddings, input_size

    def _prepare(self, features):
        if isinstance(self._decoder, PromptBatchDecoder):
            return super()._prepare(features)
        if isinstance(features, tuple):  # SAM-HQ: the decoder also reads the ViT's blocks
            return {"image_embeddings": features[0], "intermediate_embeddings": features[1]}
        return {"image_embeddings": features}

    def _low_res_size(self, features) -> tuple[int, int]:
        last = features[0] if isinstance(features, tuple) else features[-1]
        return 4 * last.shape[-2], 4 * last.shape[-1]

    def _decode(
        self, context, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's multimask outputs for B single foreground points, IoU-filtered.

        Args:
            context: from :meth:`_prepare`.
            points: (B, 2) XY in the model's input frame.

        Returns:
            low_res: (K, h, w) float32 logits of the masks whose predicted IoU passes
                ``pred_iou_thresh`` (all when it is <= 0), prompt-major.
            iou: (K,) float32 their predicted IoU.
            keep: (3B,) bool, which of the B x 3 masks were kept.
        """
        if isinstance(self._decoder, PromptBatchDecoder):
            return super()._decode(context, points)
        b = len(points)
        labels = torch.ones((1, b, 1), dtype=torch.int64, device=self.device)
        with self._autocast():
            out = self.model(
                input_points=points[None, :, None, :],
                input_labels=labels,
                multimask_output=True,
                **context,
            )
        low_res = out.pred_masks[0].flatten(0, 1)  # (3B, h, w)
        iou = out.iou_scores[0].flatten()
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
        else:
            keep = torch.ones_like(iou, dtype=torch.bool)
        return low_res[keep].float(), iou[keep].float(), keep


def model_type_of(directory: str | os.PathLike) -> str | None:
    """config.json's ``model_type`` in ``directory``, or None (no or unreadable config)."""
    path = Path(directory) / "config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value.get("model_type") if isinstance(value, dict) else None


def load_transformers_sam(directory: str | os.PathLike, device: torch.device):
    """The model and image processor of a transformers SAM-family directory, offline.

    Args:
        directory: saved with ``save_pretrained`` (or a hub repository's files).
        device: where the model goes.

    Returns:
        ``(model, image_processor)``, the model in eval mode.

    Raises:
        ValueError: the directory's model_type is not one of :data:`MODEL_CLASSES`, or the
            weights lack some of the model's parameters (another kind of checkpoint).
    """
    import transformers

    directory = Path(directory)
    model_type = model_type_of(directory)
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"Expected a transformers model directory whose config.json model_type is one of "
            f"{', '.join(MODEL_CLASSES)}, but {directory} has {model_type!r}"
        )
    model_cls = getattr(transformers, MODEL_CLASSES[model_type])
    model, info = model_cls.from_pretrained(
        directory, local_files_only=True, output_loading_info=True
    )
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{directory} is not a complete {model_cls.__name__} checkpoint: it lacks "
            f"{len(missing)} weights ({', '.join(missing[:3])}, ...)"
        )
    image_processor = transformers.AutoImageProcessor.from_pretrained(
        directory, local_files_only=True
    )
    return model.to(device).eval(), image_processor
