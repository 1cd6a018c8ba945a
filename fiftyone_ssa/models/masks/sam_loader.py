"""Build segment-anything's ``Sam`` from a config and load its weights, with one-line errors.

A config is a dict with the keys of segment-anything's ``_build_sam`` (``encoder_embed_dim``,
``encoder_depth``, ``encoder_num_heads``, ``encoder_global_attn_indexes``) plus optional keys for
the parts ``_build_sam`` fixes (see :data:`SAM_DEFAULTS`), so that tiny test models and the
official ViT-B/L/H go through the same code. Official checkpoints (``sam_vit_h_4b8939.pth``, ...)
are plain state dicts; :func:`save_sam` writes a directory (``sam_config.json`` + ``model.pt``)
that :func:`load_sam_dir` reads back.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

CONFIG_FILENAME = "sam_config.json"
WEIGHTS_FILENAME = "model.pt"

# The official image encoders, as in segment_anything/build_sam.py.
SAM_ARCHITECTURES: dict[str, dict] = {
    "vit_b": {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": [2, 5, 8, 11],
    },
    "vit_l": {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [5, 11, 17, 23],
    },
    "vit_h": {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [7, 15, 23, 31],
    },
}

# What ``_build_sam`` fixes; a config may override any of these (tiny test models do).
SAM_DEFAULTS: dict = {
    "image_size": 1024,
    "vit_patch_size": 16,
    "window_size": 14,
    "prompt_embed_dim": 256,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}

_REQUIRED_KEYS = tuple(SAM_ARCHITECTURES["vit_b"])


def resolve_sam_config(config: dict | str) -> dict:
    """The full config (defaults filled in) of an architecture name or a config dict.

    Args:
        config: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` (also spelled ``"sam-vit-b"`` ...), or a
            dict with the keys of :data:`SAM_ARCHITECTURES` entries and optionally of
            :data:`SAM_DEFAULTS`. An optional ``"name"`` key is kept for messages.

    Returns:
        A new dict with every key of :data:`SAM_DEFAULTS` and the encoder keys, plus ``name``.
    """
    if isinstance(config, str):
        name = config.lower().replace("-", "_").removeprefix("sam_")
        if name not in SAM_ARCHITECTURES:
            raise ValueError(
                f"Expected a SAM architecture among {', '.join(SAM_ARCHITECTURES)}, but got "
                f"{config!r}"
            )
        return {"name": name, **SAM_DEFAULTS, **SAM_ARCHITECTURES[name]}
    if not isinstance(config, dict):
        raise ValueError(
            f"Expected `config` to be an architecture name or a dict, but got {type(config)}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    unknown = sorted(set(config) - set(_REQUIRED_KEYS) - set(SAM_DEFAULTS) - {"name"})
    if missing or unknown:
        raise ValueError(
            f"Expected a SAM config with keys {', '.join(_REQUIRED_KEYS)} (and optionally "
            f"{', '.join(SAM_DEFAULTS)}), but got missing {missing or 'none'}, unknown "
            f"{unknown or 'none'}"
        )
    resolved = {"name": "custom", **SAM_DEFAULTS, **config}
    resolved["encoder_global_attn_indexes"] = list(resolved["encoder_global_attn_indexes"])
    return resolved


def build_sam(config: dict | str) -> Sam:
    """A randomly initialised ``Sam`` of the given architecture, in eval mode on the CPU.

    Assembles segment-anything's modules the way ``segment_anything.build_sam._build_sam`` does,
    for any encoder size.

    Args:
        config: an architecture name or config dict (see :func:`resolve_sam_config`).
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    cfg = resolve_sam_config(config)
    image_size = cfg["image_size"]
    prompt_dim = cfg["prompt_embed_dim"]
    embedding_size = image_size // cfg["vit_patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["encoder_depth"],
            embed_dim=cfg["encoder_embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["encoder_num_heads"],
            patch_size=cfg["vit_patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg["encoder_global_attn_indexes"],
            window_size=cfg["window_size"],
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=cfg["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg["decoder_depth"],
                embedding_dim=prompt_dim,
                mlp_dim=cfg["decoder_mlp_dim"],
                num_heads=cfg["decoder_num_heads"],
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message, at most 120 characters."""
    text = str(err).strip()
    if text.startswith("Weights only load failed"):
        return "not a plain state dict of tensors (refused by torch.load(weights_only=True))"
    first = text.splitlines()[0] if text else type(err).__name__
    first = first.split(". ")[0]
    return first if len(first) <= 120 else first[:117] + "..."


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict of a checkpoint, read with ``weights_only=True`` (no code in it runs).

    Raises:
        ValueError: one line: not a PyTorch checkpoint, refused by ``weights_only``, or not a
            dict of tensors.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive ("PK"); legacy checkpoints are pickles (protocol byte 0x80).
    if head and not head.startswith((b"PK", b"\x80")):
        raise ValueError(f"cannot read SAM checkpoint {path}: not a PyTorch checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip, EOF and format errors of every kind
        raise ValueError(f"cannot read SAM checkpoint {path}: {short_reason(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"cannot read SAM checkpoint {path}: not a state dict of tensors")
    return state


def _summarise(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _check_compatible(model: torch.nn.Module, state: dict, path: Path, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(state) if expected[key].shape != state[key].shape
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        key = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatches (e.g. {key}: checkpoint "
            f"{tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        )
    if missing:
        parts.append(f"missing keys {_summarise(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_summarise(unexpected)}")
    raise ValueError(
        f"checkpoint {path} does not match SAM architecture {name}: {'; '.join(parts)}"
    )


def missing_checkpoint_message(path: str | os.PathLike) -> str:
    """One line naming a missing SAM checkpoint and how to provide it."""
    from fiftyone_ssa.models.weights import PRESETS

    name = Path(path).name
    preset = next((p.name for p in PRESETS.values() if p.filename and p.filename == name), None)
    hint = (
        f"run `fiftyone-ssa models download {preset}` (needs internet), copy the file "
        "there, or pass a local path"
        if preset
        else "pass the local path of a SAM checkpoint (.pth) or of a directory saved by "
        "save_sam, or a preset (`fiftyone-ssa models list`)"
    )
    return f"missing SAM checkpoint {path}: no such file; {hint}"


def load_sam(
    checkpoint: str | os.PathLike,
    config: dict | str,
    device: str | torch.device | None = None,
) -> Sam:
    """A ``Sam`` with the weights of a checkpoint, in eval mode on ``device``.

    Args:
        checkpoint: a state dict saved with ``torch.save`` (the official ``sam_vit_*.pth`` files
            are such); read with ``weights_only=True``, so no code in it runs.
        config: an architecture name (``"vit_b"``, ``"vit_l"``, ``"vit_h"``) or config dict.
        device: where to put the model; the CPU by default.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the file is not a readable state dict, or does not match the architecture.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_message(path))
    cfg = resolve_sam_config(config)
    state = read_state_dict(path)
    # Compare shapes on a model without storage first: a wrong architecture fails at once,
    # before gigabytes of ViT-H are allocated.
    with torch.device("meta"):
        skeleton = build_sam(cfg)
    _check_compatible(skeleton, state, path, cfg["name"])
    del skeleton
    model = build_sam(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(torch.device(device) if device is not None else "cpu")


def save_sam(model: Sam, directory: str | os.PathLike, config: dict | str) -> Path:
    """Write ``sam_config.json`` and ``model.pt`` (the state dict) to ``directory``.

    Args:
        model: the model to save.
        directory: created if needed.
        config: the model's architecture name or config dict.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = resolve_sam_config(config)
    (directory / CONFIG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILENAME)
    return directory


def load_sam_dir(directory: str | os.PathLike, device: str | torch.device | None = None) -> Sam:
    """A ``Sam`` from a directory written by :func:`save_sam`.

    Raises:
        FileNotFoundError: the directory has no ``sam_config.json`` or no ``model.pt``.
        ValueError: the config or the weights are unreadable or do not match.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(f"missing {config_path}: not a SAM directory saved by save_sam")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read {config_path}: {err}") from None
    return load_sam(directory / WEIGHTS_FILENAME, config, device=device)
