"""Where model weights live, which presets exist, and fetching them for offline use.

Every model is resolved from one models directory:

1. ``set_models_dir()`` (the CLI's ``--models-dir``), else
2. ``$FIFTYONE_SSA_MODELS_DIR``, else
3. FiftyOne's model zoo directory (``$FIFTYONE_MODEL_ZOO_DIR``, default ``~/fiftyone/__models__``)
   with a ``fiftyone-ssa`` subdirectory.

A preset ``NAME`` lives in ``<models dir>/NAME/``; any other Hugging Face id ``org/name`` in
``<models dir>/hf/org--name/``. Loading never talks to a hub: weights are fetched only by
:func:`download` (``fiftyone-ssa models download``), so a missing weight fails at once with one
line saying how to provide it.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_models_dir_override: Path | None = None

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class Preset:
    """A named model whose weights can be fetched.

    Attributes:
        name: the preset name users type.
        kind: ``"sam"`` (a segment-anything checkpoint), ``"hf"`` (a Hugging Face repository)
            or ``"open_clip"`` (an open_clip checkpoint on the Hugging Face hub).
        source: a URL for ``sam``, a repository id for ``hf`` / ``open_clip``.
        task: what the model is for (``mask``, ``semantic``, ``caption``, ``clip``).
        description: one line for ``models list``.
        filename: the checkpoint file name for ``sam``.
        architecture: SAM encoder architecture or open_clip model name.
    """

    name: str
    kind: str
    source: str
    task: str
    description: str
    filename: str = ""
    architecture: str = ""


def _sam(name: str, arch: str, filename: str, size: str) -> Preset:
    return Preset(name, "sam", _SAM_URL + filename, "mask", f"SAM {size} ({arch})", filename, arch)


def _hf(name: str, repo: str, task: str, description: str) -> Preset:
    return Preset(name, "hf", repo, task, description)


_SEGFORMER_ADE = {
    "b0": "nvidia/segformer-b0-finetuned-ade-512-512",
    "b1": "nvidia/segformer-b1-finetuned-ade-512-512",
    "b2": "nvidia/segformer-b2-finetuned-ade-512-512",
    "b3": "nvidia/segformer-b3-finetuned-ade-512-512",
    "b4": "nvidia/segformer-b4-finetuned-ade-512-512",
    "b5": "nvidia/segformer-b5-finetuned-ade-640-640",
}
_SEGFORMER_CITYSCAPES = {
    f"b{i}": f"nvidia/segformer-b{i}-finetuned-cityscapes-1024-1024" for i in range(6)
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _sam("sam-vit-b", "vit_b", "sam_vit_b_01ec64.pth", "ViT-B, 91M parameters"),
        _sam("sam-vit-l", "vit_l", "sam_vit_l_0b3195.pth", "ViT-L, 308M parameters"),
        _sam("sam-vit-h", "vit_h", "sam_vit_h_4b8939.pth", "ViT-H, 636M parameters"),
        *[
            _hf(f"segformer-{b}-ade20k", repo, "semantic", f"Segformer-{b.upper()} ADE20K")
            for b, repo in _SEGFORMER_ADE.items()
        ],
        *[
            _hf(f"segformer-{b}-cityscapes", repo, "semantic", f"Segformer-{b.upper()} Cityscapes")
            for b, repo in _SEGFORMER_CITYSCAPES.items()
        ],
        _hf(
            "oneformer-ade20k-swin-large",
            "shi-labs/oneformer_ade20k_swin_large",
            "semantic",
            "OneFormer Swin-L ADE20K",
        ),
        _hf(
            "oneformer-ade20k-swin-tiny",
            "shi-labs/oneformer_ade20k_swin_tiny",
            "semantic",
            "OneFormer Swin-T ADE20K",
        ),
        _hf(
            "oneformer-coco-swin-large",
            "shi-labs/oneformer_coco_swin_large",
            "semantic",
            "OneFormer Swin-L COCO panoptic",
        ),
        _hf(
            "oneformer-cityscapes-swin-large",
            "shi-labs/oneformer_cityscapes_swin_large",
            "semantic",
            "OneFormer Swin-L Cityscapes",
        ),
        _hf(
            "clipseg-rd64-refined",
            "CIDAS/clipseg-rd64-refined",
            "semantic",
            "CLIPSeg rd64 (open vocabulary)",
        ),
        _hf("clipseg-rd16", "CIDAS/clipseg-rd16", "semantic", "CLIPSeg rd16 (open vocabulary)"),
        _hf(
            "blip-large",
            "Salesforce/blip-image-captioning-large",
            "caption",
            "BLIP captioner, large",
        ),
        _hf(
            "blip-base", "Salesforce/blip-image-captioning-base", "caption", "BLIP captioner, base"
        ),
        Preset(
            "clip-vit-l-14",
            "open_clip",
            "timm/vit_large_patch14_clip_224.openai",
            "clip",
            "CLIP ViT-L/14 (OpenAI weights)",
            "open_clip_pytorch_model.bin",
            "ViT-L-14",
        ),
        Preset(
            "clip-vit-b-32",
            "open_clip",
            "timm/vit_base_patch32_clip_224.openai",
            "clip",
            "CLIP ViT-B/32 (OpenAI weights)",
            "open_clip_pytorch_model.bin",
            "ViT-B-32",
        ),
    ]
}

# The models of SSA-engine by role, and of its light mode (kept here, with no model library
# imported, so that the plugin's forms can show them).
DEFAULT_ENGINE_MODELS = {
    "ade": "oneformer-ade20k-swin-large",
    "coco": "oneformer-coco-swin-large",
    "captioner": "blip-large",
    "clip": "clip-vit-l-14",
    "clipseg": "clipseg-rd64-refined",
}
LIGHT_ENGINE_MODELS = {
    "ade": "oneformer-ade20k-swin-tiny",
    "coco": "oneformer-coco-swin-large",
    "captioner": "blip-base",
    "clip": "clip-vit-b-32",
    "clipseg": "clipseg-rd16",
}


def set_models_dir(path: str | os.PathLike | None) -> None:
    """Overrides the models directory for this process (``None`` restores the default)."""
    global _models_dir_override
    _models_dir_override = Path(path).expanduser() if path else None


def get_models_dir() -> Path:
    """The directory model weights are read from and downloaded to."""
    if _models_dir_override is not None:
        return _models_dir_override
    if os.environ.get("FIFTYONE_SSA_MODELS_DIR"):
        return Path(os.environ["FIFTYONE_SSA_MODELS_DIR"]).expanduser()
    zoo = os.environ.get("FIFTYONE_MODEL_ZOO_DIR") or os.path.join("~", "fiftyone", "__models__")
    return Path(zoo).expanduser() / "fiftyone-ssa"


def looks_like_hf_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face repository id (``org/name``)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def local_dir(name: str) -> Path:
    """The directory a preset or Hugging Face id is stored in (it may not exist)."""
    if name in PRESETS:
        return get_models_dir() / name
    if looks_like_hf_id(name):
        return get_models_dir() / "hf" / name.replace("/", "--")
    raise ValueError(f"Expected a preset name or a Hugging Face id, but got {name!r}")


def _has_hf_weights(directory: Path) -> bool:
    if not (directory / "config.json").is_file():
        return False
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    return any(any(directory.glob(p)) for p in patterns)


def is_present(name: str) -> bool:
    """Whether the weights of a preset or Hugging Face id are in the models directory."""
    directory = local_dir(name)
    preset = PRESETS.get(name)
    if preset is not None and preset.kind in ("sam", "open_clip"):
        return (directory / preset.filename).is_file()
    return _has_hf_weights(directory)


def missing_weights_message(*names: str) -> str:
    """One line telling the user which files are missing and how to provide them."""
    where = []
    for name in names:
        directory = local_dir(name)
        preset = PRESETS.get(name)
        where.append(directory / preset.filename if preset and preset.filename else directory)
    return (
        f"missing weights for {', '.join(map(repr, names))}: {', '.join(map(str, where))} not "
        f"found. Run `fiftyone-ssa models download {' '.join(names)}` (needs internet), or copy "
        "the files there, or point --models-dir / $FIFTYONE_SSA_MODELS_DIR at a directory that "
        "has them"
    )


def check_present(sources: Iterable[Any]) -> None:
    """Raises FileNotFoundError (one line) naming every preset or hub id whose weights are absent.

    Loaded models and existing paths pass; unknown names are left to the loaders' errors.
    """
    missing = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            continue
        name = os.fspath(source)
        known = name in PRESETS or looks_like_hf_id(name)
        if known and not Path(name).expanduser().exists() and not is_present(name):
            missing.append(name)
    if missing:
        raise FileNotFoundError(missing_weights_message(*dict.fromkeys(missing)))


def resolve(name: str) -> Path:
    """The local path of a preset's or Hugging Face id's weights.

    Returns the checkpoint file for SAM and open_clip presets, the directory otherwise.

    Raises:
        FileNotFoundError: the weights are not in the models directory (one line saying how
            to provide them).
    """
    if not is_present(name):
        raise FileNotFoundError(missing_weights_message(name))
    preset = PRESETS.get(name)
    if preset is not None and preset.kind in ("sam", "open_clip"):
        return local_dir(name) / preset.filename
    return local_dir(name)


def _download_url(url: str, dest: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    part = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    part.replace(dest)


def download(name: str, progress: bool = True) -> Path:
    """Fetches the weights of a preset or Hugging Face id into the models directory.

    Args:
        name: a preset name or a Hugging Face repository id.
        progress: show a progress bar.

    Returns:
        The local path, as :func:`resolve` gives it.

    Raises:
        RuntimeError: the download failed (one line with the reason).
    """
    if is_present(name):
        return resolve(name)
    directory = local_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    preset = PRESETS.get(name)
    try:
        if preset is not None and preset.kind == "sam":
            _download_url(preset.source, directory / preset.filename, progress)
        else:
            from huggingface_hub import hf_hub_download, snapshot_download

            repo = preset.source if preset is not None else name
            if preset is not None and preset.kind == "open_clip":
                hf_hub_download(repo, preset.filename, local_dir=directory)
            else:
                snapshot_download(
                    repo,
                    local_dir=directory,
                    allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"],
                )
    except Exception as err:  # network and hub errors of every kind
        if not any(directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RuntimeError(
            f"could not download {name!r} into {directory}: {reason}. Copy the files there by "
            "hand on an offline machine"
        ) from None
    return resolve(name)
