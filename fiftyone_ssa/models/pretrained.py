"""Loading a transformers model and its processor from a local ``save_pretrained`` directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_error(kind: str, path: Path, err: Exception) -> ValueError:
    """One line saying which model could not be loaded from where, and why."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f"cannot load a {kind} model from {path}: {first}")


def load_pretrained(
    path: Path, processor_cls: Any, model_cls: Any, kind: str, complete: bool = False
) -> tuple[Any, Any]:
    """The processor and model saved in ``path``, never contacting a hub.

    Args:
        path: a local directory saved with ``save_pretrained``.
        processor_cls: the processor class (``from_pretrained``).
        model_cls: the model class (``from_pretrained``).
        kind: what the model is, for the error message (e.g. ``"CLIPSeg"``).
        complete: refuse a checkpoint that lacks some of the model's weights (transformers
            would initialise them at random: an encoder-only or classification checkpoint
            loaded as a segmentation model gets a random head and gives random classes).

    Returns:
        ``(processor, model)``, the model on the CPU.

    Raises:
        ValueError: one line, whatever went wrong (missing files, config, weights, shapes).
    """
    try:
        processor = processor_cls.from_pretrained(path, local_files_only=True)
        model, info = model_cls.from_pretrained(
            path, local_files_only=True, output_loading_info=True
        )
    except Exception as err:  # hub, config, safetensors and shape errors alike
        raise load_error(kind, path, err) from None
    missing = sorted(info.get("missing_keys") or ())
    if complete and missing:
        raise ValueError(
            f"cannot load a {kind} model from {path}: {len(missing)} of its weights are not in "
            f"the checkpoint (e.g. {missing[0]}), so they would be random; is it a {kind} "
            "checkpoint (not an encoder-only or classification one)?"
        )
    return processor, model


def load_pretrained_on_device(
    path: Path, processor_cls: Any, model_cls: Any, kind: str, device: Any = None, half: bool = True
) -> tuple[Any, Any, torch.device, torch.dtype]:
    """:func:`load_pretrained`, the model then moved to its device and dtype, in eval mode.

    Args:
        path, processor_cls, model_cls, kind: see :func:`load_pretrained`.
        device: torch device; CUDA when available by default.
        half: float16 weights on CUDA (float32 elsewhere).

    Returns:
        ``(processor, model, device, dtype)``.
    """
    device = torch.device(device) if device else default_device()
    processor, model = load_pretrained(path, processor_cls, model_cls, kind)
    dtype = torch.float16 if (half and device.type == "cuda") else torch.float32
    model.to(device, dtype).eval()
    return processor, model, device, dtype
