"""Loading a transformers model and its processor from a local ``save_pretrained`` directory."""

from __future__ import annotations

import json
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


def hub_processor_options(path: Path) -> dict[str, Any]:
    """Processor options that make a hub repository's legacy files load as shipped, offline.

    - OneFormer's ``preprocessor_config.json`` names a ``class_info_file`` that transformers
      reads from another repository (``repo_path``, fetched when the processor is built): it is
      read from ``path`` instead, where ``fiftyone-ssa models download`` puts it.
    - Segformer's and OneFormer's legacy ``reduce_labels`` is today's ``do_reduce_labels``
      (transformers 5 keeps the old key but does not act on it).

    Args:
        path: a local model directory.

    Returns:
        Keyword arguments for the image processor's ``from_pretrained``.

    Raises:
        FileNotFoundError: the class-info file the config names is not in ``path``.
    """
    config_path = path / "preprocessor_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}  # no or unreadable config: transformers' own error says so
    if not isinstance(config, dict):
        return {}
    options: dict[str, Any] = {}
    if "reduce_labels" in config and "do_reduce_labels" not in config:
        options["do_reduce_labels"] = bool(config["reduce_labels"])
    class_info = config.get("class_info_file")
    if isinstance(class_info, str) and class_info:
        if not (path / class_info).is_file():
            source = config.get("repo_path") or "shi-labs/oneformer_demo"
            raise FileNotFoundError(
                f"{path} lacks {class_info} (the class names its preprocessor_config.json reads "
                f"from {source}): run `fiftyone-ssa models download` for this model, or copy "
                f"{class_info} from {source} into {path}"
            )
        options["repo_path"] = str(path)
    return options


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
        options = hub_processor_options(path)
        processor = processor_cls.from_pretrained(path, local_files_only=True, **options)
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
