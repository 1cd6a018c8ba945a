"""The masks of one image, as every mask branch returns them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskSet:
    """N binary masks of one image with their scores, all tensors on one device.

    Attributes:
        masks: (N, H, W) bool.
        predicted_iou: (N,) float32; NaN where the branch has no such score.
        stability_score: (N,) float32; NaN where the branch has no such score.
    """

    masks: torch.Tensor
    predicted_iou: torch.Tensor
    stability_score: torch.Tensor

    def __post_init__(self) -> None:
        if self.masks.dim() != 3:
            raise ValueError(
                f"Expected `masks` to be (N, H, W), but got shape {tuple(self.masks.shape)}"
            )
        n = self.masks.shape[0]
        for name in ("predicted_iou", "stability_score"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(
                    f"Expected `{name}` to be ({n},), but got shape {tuple(value.shape)}"
                )

    def __len__(self) -> int:
        return self.masks.shape[0]

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> MaskSet:
        """Masks without scores (NaN scores)."""
        nan = torch.full((masks.shape[0],), float("nan"), device=masks.device)
        return cls(masks=masks.bool(), predicted_iou=nan, stability_score=nan.clone())

    def select(self, keep: torch.Tensor) -> MaskSet:
        """The subset given by a (N,) bool or index tensor."""
        return MaskSet(self.masks[keep], self.predicted_iou[keep], self.stability_score[keep])
