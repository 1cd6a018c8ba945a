"""CLIPSeg's text side: class names as the conditional embeddings its decoder reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def clipseg_text_embeddings(model: Any, tokenizer: Any, names: Sequence[str]) -> torch.Tensor:
    """CLIPSeg's conditional embeddings of class names, on the model's device.

    A name longer than the text encoder's positions (77 tokens for CIDAS' models) is cut there,
    as CLIP's own tokenizers do, rather than failing the whole batch.

    Args:
        model: a ``CLIPSegForImageSegmentation``.
        tokenizer: its ``CLIPTokenizer``.
        names: T class names.

    Returns:
        (T, D) in the model's dtype.
    """
    tokens = tokenizer(
        list(names),
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    device = next(model.parameters()).device
    return model.get_conditional_embeddings(
        batch_size=len(names),
        input_ids=tokens["input_ids"].to(device),
        attention_mask=tokens["attention_mask"].to(device),
    )
