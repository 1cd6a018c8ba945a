"""BLIP captions of mask crops: unconditional captioning, all crops batched through ``generate``.

The crops are cut and resized on the device (:class:`fiftyone_ssa.core.crops.CropTransform`,
with the processor's own size, resampling and normalisation), so no crop ever goes through PIL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fiftyone_ssa.core.crops import CropTransform
from fiftyone_ssa.models.pretrained import load_pretrained_on_device

# PIL resampling codes image processors store, as torch interpolation modes.
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def crop_transform_from_processor(image_processor) -> CropTransform:
    """The :class:`CropTransform` equivalent of a transformers image processor.

    Reads its fixed output size, resampling, rescale factor and mean/std.

    Raises:
        ValueError: the processor does not resize to a fixed height and width.
    """
    size = image_processor.size
    get = (
        size.get if hasattr(size, "get") else lambda key, default=None: getattr(size, key, default)
    )
    height, width = get("height"), get("width")
    if not height or not width:
        shortest = get("shortest_edge")
        if not shortest:
            raise ValueError(
                f"Expected an image processor resizing to a fixed size, but got size={size}"
            )
        height = width = shortest
    resample = getattr(image_processor, "resample", 3)
    mode = _RESAMPLE_MODES.get(int(getattr(resample, "value", resample)), "bilinear")
    mean = image_processor.image_mean if image_processor.do_normalize else (0.0, 0.0, 0.0)
    std = image_processor.image_std if image_processor.do_normalize else (1.0, 1.0, 1.0)
    scale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
    # CropTransform normalises 0-255 pixels with mean/std in [0, 1] units: fold the rescale in.
    unit = scale * 255.0
    return CropTransform(
        size=(int(height), int(width)),
        mode=mode,
        mean=tuple(float(m) / unit for m in mean),
        std=tuple(float(s) / unit for s in std),
    )


@functools.cache
def _sdpa_blip_attention() -> type:
    from transformers.models.blip.modeling_blip import BlipAttention

    class SdpaBlipAttention(BlipAttention):
        """``BlipAttention`` through ``scaled_dot_product_attention`` (same parameters)."""

        def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
            """(B, T, C) -> (B, T, C); no attention probabilities."""
            batch, tokens, channels = hidden_states.shape
            qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, self.num_heads, -1)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)
            context = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, scale=self.scale
            )
            return self.projection(context.transpose(1, 2).reshape(batch, tokens, channels)), None

    return SdpaBlipAttention


def use_sdpa_attention(vision_model: torch.nn.Module) -> int:
    """Makes BLIP's vision encoder attend through ``scaled_dot_product_attention``.

    transformers' ``BlipAttention`` materialises the (B, heads, T, T) scores and their softmax;
    SDPA computes the same attention in fused kernels (flash / memory-efficient on CUDA, a fused
    kernel on CPUs) with the same parameters, in eval mode (no attention dropout). Modules of any
    other class are left alone.

    Args:
        vision_model: ``BlipForConditionalGeneration.vision_model``.

    Returns:
        How many attention modules were switched.
    """
    sdpa = _sdpa_blip_attention()
    switched = 0
    for module in vision_model.modules():
        if type(module) is sdpa.__base__:
            module.__class__ = sdpa
            switched += 1
    return switched


class BlipCaptioner:
    """BLIP (``BlipForConditionalGeneration``) unconditional captions of image crops.

    Args:
        path: a local directory saved with ``save_pretrained`` (model and ``BlipProcessor``).
        device: torch device; CUDA when available by default.
        half: run in float16 on CUDA (as the original SSA-engine does).
        batch_size: crops per ``generate`` call.
        max_new_tokens: caption length limit in tokens.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device=None,
        half: bool = True,
        batch_size: int = 64,
        max_new_tokens: int = 20,
    ):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
        self.path = Path(path)
        self.name = str(path)
        self.processor, self.model, self.device, self.dtype = load_pretrained_on_device(
            self.path, BlipProcessor, BlipForConditionalGeneration, "BLIP captioning", device, half
        )
        use_sdpa_attention(self.model.vision_model)
        self.transform = crop_transform_from_processor(self.processor.image_processor)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def caption_pixels(self, pixels: torch.Tensor) -> list[str]:
        """Captions of preprocessed crops (one ``generate`` call).

        Args:
            pixels: (B, 3, h, w) float32, as :attr:`transform` makes them.

        Returns:
            B captions.
        """
        if pixels.shape[0] == 0:
            return []
        tokens = self.model.generate(
            pixel_values=pixels.to(self.device, self.dtype),
            max_new_tokens=self.max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def caption(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[str]:
        """Captions of the crops of every box of every image, ``batch_size`` crops per call.

        Args:
            images: B tensors (3, H_i, W_i) uint8 RGB, on the device.
            boxes: B tensors (N_i, 4) int64 ``[x0, y0, x1, y1]`` crop boxes, end-exclusive.

        Returns:
            sum(N_i) captions, image by image, box by box.
        """
        captions: list[str] = []
        for pixels in self.transform.batches(images, boxes, self.batch_size):
            captions.extend(self.caption_pixels(pixels))
        return captions
