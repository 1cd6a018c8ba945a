"""Mask branches: class-agnostic masks per image, from SAM or from an existing field."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import torch

from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.models.masks.fast_generator import (
    FastMaskGenerator,
    check_point_grid_settings,
    check_rgb_image,
)
from fiftyone_ssa.models.semantic.branches import default_device

# The original SSA's automatic mask generation settings (the rest at segment-anything's defaults).
SSA_MASK_GENERATOR_DEFAULTS: dict = {
    "points_per_side": 64,
    "pred_iou_thresh": 0.86,
    "stability_score_thresh": 0.92,
    "crop_n_layers": 1,
    "crop_n_points_downscale_factor": 2,
    "min_mask_region_area": 100,
}

# segment-anything's SamAutomaticMaskGenerator settings a user may override -> (integer?,
# lowest, highest allowed value; None: unbounded).
_OPTION_RANGES = {
    "points_per_side": (True, 1, None),
    "points_per_batch": (True, 1, None),
    "pred_iou_thresh": (False, 0.0, 1.0),
    "stability_score_thresh": (False, 0.0, 1.0),
    "stability_score_offset": (False, None, None),
    "box_nms_thresh": (False, 0.0, 1.0),
    "crop_n_layers": (True, 0, None),
    "crop_nms_thresh": (False, 0.0, 1.0),
    "crop_overlap_ratio": (False, 0.0, 1.0),
    "crop_n_points_downscale_factor": (True, 1, None),
    "min_mask_region_area": (True, 0, None),
}
MASK_GENERATOR_OPTIONS = tuple(_OPTION_RANGES)


class MaskBranch:
    """Base class of mask branches.

    Attributes:
        name: how the branch was asked for.
        device: where the masks are returned.
    """

    name: str = ""
    device: torch.device = torch.device("cpu")

    def generate(self, image: np.ndarray) -> MaskSet:
        """The masks of one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            The image's masks, (N, H, W) bool on ``self.device``, with their scores.
        """
        raise NotImplementedError


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(MASK_GENERATOR_OPTIONS))
    if unknown:
        raise ValueError(
            f"Expected mask generator options among {', '.join(MASK_GENERATOR_OPTIONS)}, but got "
            f"{', '.join(unknown)}"
        )
    for key, value in options.items():
        integer, low, high = _OPTION_RANGES[key]
        if value is None and key == "points_per_batch":
            continue
        kind = numbers.Integral if integer else numbers.Real
        ok = (
            isinstance(value, kind)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (low is None or value >= low)
            and (high is None or value <= high)
        )
        if not ok:
            want = "an integer" if integer else "a finite number"
            if high is not None:
                want += f" in [{low}, {high}]"
            elif low is not None:
                want += f" >= {low}"
            raise ValueError(f"Expected mask option {key!r} to be {want}, but got {value!r}")
    return {**SSA_MASK_GENERATOR_DEFAULTS, **options}


class SamMaskBranch(MaskBranch):
    """SAM's automatic mask generation, with the original SSA's settings by default.

    Args:
        model: a loaded ``segment_anything.modeling.Sam``.
        name: display name.
        fast: use the project's batched on-device generator instead of segment-anything's.
        **options: ``SamAutomaticMaskGenerator`` settings overriding
            :data:`SSA_MASK_GENERATOR_DEFAULTS`.
    """

    def __init__(self, model, name: str = "sam", fast: bool = True, **options):
        self.options = _check_options(options)
        self.model = model
        self.name = name
        self.device = next(model.parameters()).device
        self.fast = fast
        # Built now so that a bad setting fails before any sample is processed.
        self._generator = self._make_generator()

    def _make_generator(self):
        if self.fast:
            return FastMaskGenerator(self.model, **self.options)  # checks its grid itself
        options = self.options
        if options.get("points_per_side") is not None:  # else a ZeroDivisionError in there
            check_point_grid_settings(
                options["points_per_side"],
                options.get("crop_n_layers", 0),
                options.get("crop_n_points_downscale_factor", 1),
            )
        from segment_anything import SamAutomaticMaskGenerator

        if options.get("points_per_batch", 0) is None:  # "the default": segment-anything's is 64
            options = {k: v for k, v in options.items() if k != "points_per_batch"}
        return SamAutomaticMaskGenerator(self.model, output_mode="binary_mask", **options)

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> MaskSet:
        generator = self._generator
        if self.fast:
            out = generator.generate(image)
            return MaskSet(
                masks=out.masks.to(self.device),
                predicted_iou=out.predicted_iou.float().to(self.device),
                stability_score=out.stability_score.float().to(self.device),
            )
        check_rgb_image(image)
        records = generator.generate(image)
        h, w = image.shape[:2]
        if not records:
            return MaskSet.from_masks(torch.zeros((0, h, w), dtype=torch.bool, device=self.device))
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
        return MaskSet(
            masks=masks.to(self.device),
            predicted_iou=torch.tensor(
                [r["predicted_iou"] for r in records], dtype=torch.float32, device=self.device
            ),
            stability_score=torch.tensor(
                [r["stability_score"] for r in records], dtype=torch.float32, device=self.device
            ),
        )


class TransformersSamMaskBranch(SamMaskBranch):
    """Automatic mask generation with a transformers SAM-family model (SAM 2 / 2.1, EdgeTAM,
    SAM-HQ), with the original SSA's settings by default.

    Args:
        model: a loaded ``Sam2Model``, ``EdgeTamModel`` or ``SamHQModel``.
        image_processor: its image processor.
        name: display name.
        **options: settings overriding :data:`SSA_MASK_GENERATOR_DEFAULTS`.
    """

    def __init__(self, model, image_processor, name: str = "sam2", **options):
        self.image_processor = image_processor
        super().__init__(model, name=name, fast=True, **options)

    def _make_generator(self):
        from fiftyone_ssa.models.masks.transformers_sam import TransformersSamGenerator

        return TransformersSamGenerator(self.model, self.image_processor, **self.options)


def load_transformers_sam_branch(
    directory: str | os.PathLike, device=None, name: str | None = None, **options
) -> TransformersSamMaskBranch:
    """A mask branch from a transformers SAM-family directory (config.json model_type
    ``sam2``, ``sam2_video``, ``edgetam``, ``edgetam_video`` or ``sam_hq``), read offline.

    Args:
        directory: the model's files as its hub repository ships them.
        device: torch device; CUDA when available by default.
        name: display name.
        **options: mask generator settings.

    Raises:
        ValueError: a bad option, or a directory that is not such a model.
    """
    from fiftyone_ssa.models.masks.transformers_sam import load_transformers_sam

    options = _check_options(options)  # fail on a bad option before loading weights
    device = torch.device(device) if device else default_device()
    model, image_processor = load_transformers_sam(directory, device)
    return TransformersSamMaskBranch(model, image_processor, name=name or str(directory), **options)


def load_mask_branch(source: str | os.PathLike, **kwargs) -> SamMaskBranch:
    """A SAM mask branch from a path: a transformers SAM-family directory (by its
    config.json), else a segment-anything checkpoint or ``save_sam`` directory."""
    from fiftyone_ssa.models.masks.transformers_sam import MODEL_CLASSES, model_type_of

    path = Path(source)
    if path.is_dir() and model_type_of(path) in MODEL_CLASSES:
        for key, allowed in (("model_type", (None,)), ("fast", (True,))):
            if kwargs.pop(key, allowed[0]) not in allowed:
                raise ValueError(
                    f"`{key}` is for segment-anything checkpoints; {path} is a transformers "
                    f"{model_type_of(path)} model"
                )
        return load_transformers_sam_branch(path, **kwargs)
    return load_sam_branch(path, **kwargs)


def _guess_sam_architecture(checkpoint: Path) -> str:
    """vit_b / vit_l / vit_h from the width of a checkpoint's patch embedding."""
    from fiftyone_ssa.models.masks import sam_loader

    with open(checkpoint, "rb") as f:
        zipped = f.read(2) == b"PK"
    if not zipped:  # legacy pickles cannot be memory-mapped: read (and check) them in full
        state = sam_loader.read_state_dict(checkpoint)
    else:
        try:
            state = torch.load(checkpoint, map_location="meta", weights_only=True, mmap=True)
        except Exception as err:  # pickle, zip and format errors of every kind
            reason = sam_loader.short_reason(err)
            raise ValueError(f"cannot read SAM checkpoint {checkpoint}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints wrap the state dict
    weight = state.get("image_encoder.patch_embed.proj.weight") if isinstance(state, dict) else None
    if isinstance(state, dict) and not any(
        isinstance(key, str) and key.startswith("image_encoder.") for key in state
    ):  # model_type would not help: say what the file is not
        raise ValueError(
            f"{checkpoint} is not a segment-anything SAM checkpoint: it has no image_encoder.* "
            "weights (SAM 2 and transformers' SamModel files are not supported)"
        )
    widths = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    if weight is None or weight.shape[0] not in widths:
        raise ValueError(
            f"cannot tell the SAM architecture of {checkpoint}; pass model_type=vit_b|vit_l|vit_h"
        )
    return widths[weight.shape[0]]


def load_sam_branch(
    source: str | os.PathLike,
    model_type: str | None = None,
    device=None,
    fast: bool = True,
    name: str | None = None,
    **options,
) -> SamMaskBranch:
    """A SAM mask branch from a checkpoint file or a directory with ``sam_config.json``.

    Args:
        source: a ``.pth`` state dict, or a directory saved by ``save_sam``.
        model_type: ``vit_b``, ``vit_l`` or ``vit_h`` for a checkpoint file (guessed from the
            checkpoint when omitted).
        device: torch device; CUDA when available by default.
        fast: use the batched on-device generator.
        name: display name.
        **options: mask generator settings.
    """
    from fiftyone_ssa.models.masks import sam_loader

    options = _check_options(options)  # fail on a bad option before loading weights
    source = Path(source)
    device = torch.device(device) if device else default_device()
    if source.is_dir():
        config_path = source / "sam_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{source} has no sam_config.json: not a saved SAM directory")
        model = sam_loader.load_sam_dir(source, device=device)
    else:
        if not source.is_file():  # the loader's message says how to provide it
            raise FileNotFoundError(sam_loader.missing_checkpoint_message(source))
        arch = model_type or _guess_sam_architecture(source)
        model = sam_loader.load_sam(source, arch, device=device)
    return SamMaskBranch(model, name=name or str(source), fast=fast, **options)
