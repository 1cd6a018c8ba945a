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

import json
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
        gated: the hub repository is gated: its licence must be accepted on the hub, and the
            download made logged in (``hf auth login``), before the files can be fetched.
        files_of: another preset whose directory holds this one's files (one repository, two
            models: ``sam3-tracker`` reads ``sam3``'s ``facebook/sam3``), fetched once.
    """

    name: str
    kind: str
    source: str
    task: str
    description: str
    filename: str = ""
    architecture: str = ""
    gated: bool = False
    files_of: str = ""


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

# Mask2Former (Swin backbones) and EoMT (a plain ViT-L / ViT-S), by preset: (repository, what).
# Panoptic checkpoints give semantic maps from the same class and mask scores.
_MASK2FORMER = {
    "mask2former-swin-tiny-ade20k": (
        "facebook/mask2former-swin-tiny-ade-semantic",
        "Swin-T ADE20K",
    ),
    "mask2former-swin-large-ade20k": (
        "facebook/mask2former-swin-large-ade-semantic",
        "Swin-L ADE20K",
    ),
    "mask2former-swin-tiny-cityscapes": (
        "facebook/mask2former-swin-tiny-cityscapes-semantic",
        "Swin-T Cityscapes",
    ),
    "mask2former-swin-large-cityscapes": (
        "facebook/mask2former-swin-large-cityscapes-semantic",
        "Swin-L Cityscapes",
    ),
    "mask2former-swin-large-coco": (
        "facebook/mask2former-swin-large-coco-panoptic",
        "Swin-L COCO panoptic",
    ),
}
_EOMT = {
    "eomt-large-ade20k": ("tue-mps/ade20k_semantic_eomt_large_512", "ViT-L ADE20K, 512"),
    "eomt-large-cityscapes": (
        "tue-mps/cityscapes_semantic_eomt_large_1024",
        "ViT-L Cityscapes, 1024",
    ),
    "eomt-large-coco": ("tue-mps/coco_panoptic_eomt_large_640", "ViT-L COCO panoptic, 640"),
    "eomt-small-coco": ("tue-mps/coco_panoptic_eomt_small_640_2x", "ViT-S COCO panoptic, 640"),
}

# Mask branches run through transformers (SAM 2.1, EdgeTAM, SAM-HQ), by preset: (repository,
# what). The SAM 2.1 repositories hold transformers files (config.json model_type sam2_video,
# model.safetensors) beside SAM 2's own checkpoint; only the former are fetched.
_TRANSFORMERS_SAM = {
    "sam2.1-hiera-tiny": ("facebook/sam2.1-hiera-tiny", "SAM 2.1 Hiera-T, 39M parameters"),
    "sam2.1-hiera-small": ("facebook/sam2.1-hiera-small", "SAM 2.1 Hiera-S, 46M parameters"),
    "sam2.1-hiera-base-plus": (
        "facebook/sam2.1-hiera-base-plus",
        "SAM 2.1 Hiera-B+, 81M parameters",
    ),
    "sam2.1-hiera-large": ("facebook/sam2.1-hiera-large", "SAM 2.1 Hiera-L, 224M parameters"),
    "edgetam": ("yonigozlan/EdgeTAM-hf", "EdgeTAM (RepViT-M1 encoder, SAM 2 decoder)"),
    "sam-hq-vit-b": ("syscv-community/sam-hq-vit-base", "SAM-HQ ViT-B"),
    "sam-hq-vit-h": ("syscv-community/sam-hq-vit-huge", "SAM-HQ ViT-H"),
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _sam("sam-vit-b", "vit_b", "sam_vit_b_01ec64.pth", "ViT-B, 91M parameters"),
        _sam("sam-vit-l", "vit_l", "sam_vit_l_0b3195.pth", "ViT-L, 308M parameters"),
        _sam("sam-vit-h", "vit_h", "sam_vit_h_4b8939.pth", "ViT-H, 636M parameters"),
        *[_hf(name, repo, "mask", what) for name, (repo, what) in _TRANSFORMERS_SAM.items()],
        Preset(
            "sam3-tracker",
            "hf",
            "facebook/sam3",
            "mask",
            "SAM 3's tracker (SAM 2-like prompts; the sam3 preset's files, gated)",
            gated=True,
            files_of="sam3",
        ),
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
        *[
            _hf(name, repo, "semantic", f"Mask2Former {what}")
            for name, (repo, what) in _MASK2FORMER.items()
        ],
        *[_hf(name, repo, "semantic", f"EoMT {what}") for name, (repo, what) in _EOMT.items()],
        _hf(
            "clipseg-rd64-refined",
            "CIDAS/clipseg-rd64-refined",
            "semantic",
            "CLIPSeg rd64 (open vocabulary)",
        ),
        _hf("clipseg-rd16", "CIDAS/clipseg-rd16", "semantic", "CLIPSeg rd16 (open vocabulary)"),
        Preset(
            "sam3",
            "hf",
            "facebook/sam3",
            "semantic",
            "SAM 3, your classes as text concepts (gated: accept its licence on the hub)",
            gated=True,
        ),
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
        return get_models_dir() / (PRESETS[name].files_of or name)
    if looks_like_hf_id(name):
        return get_models_dir() / "hf" / name.replace("/", "--")
    raise ValueError(f"Expected a preset name or a Hugging Face id, but got {name!r}")


_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")

# The tokenizer files a model family loads, as alternatives: any one group complete will do
# (the hub's repositories ship the slow tokenizer's files, newer saves a tokenizer.json).
_TOKENIZER_FILES = {
    "oneformer": (("tokenizer.json",), ("vocab.json", "merges.txt")),
    "clipseg": (("tokenizer.json",), ("vocab.json", "merges.txt")),
    "blip": (("tokenizer.json",), ("vocab.txt",)),
    "sam3": (("tokenizer.json",), ("vocab.json", "merges.txt")),
    "sam3_video": (("tokenizer.json",), ("vocab.json", "merges.txt")),
}


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it cannot be read as one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def class_info_file(directory: Path) -> str | None:
    """The class-info file a OneFormer processor config names (``class_info_file``), if any.

    OneFormer's hub repositories keep their class names in a file of *another* repository
    (``repo_path``, the ``shi-labs/oneformer_demo`` dataset), which transformers fetches when
    the processor is built; :func:`download` puts it beside the model instead.
    """
    config = _read_json(directory / "preprocessor_config.json") or {}
    name = config.get("class_info_file")
    return name if isinstance(name, str) and name else None


def missing_files(directory: Path) -> list[str]:
    """The files a Hugging Face model directory lacks for an offline load (empty if complete).

    Needed: ``config.json`` (readable), the weights, ``preprocessor_config.json`` (or a
    ``processor_config.json`` holding the image processor's settings, as transformers 5 saves
    processors and ``facebook/sam3`` ships), the class-info file it names (OneFormer), and the
    tokenizer files of the model's family (OneFormer, CLIPSeg and SAM 3: CLIP's ``vocab.json``
    + ``merges.txt``; BLIP: ``vocab.txt``; or a ``tokenizer.json``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory.name}/ (the whole directory)"]
    config = _read_json(directory / "config.json")
    if config is None:
        present = (directory / "config.json").is_file()
        return ["config.json (unreadable)" if present else "config.json"]
    missing = []
    if not any(any(directory.glob(p)) for p in _WEIGHT_PATTERNS):
        missing.append("model.safetensors or pytorch_model.bin")
    if not (directory / "preprocessor_config.json").is_file():
        if "image_processor" not in (_read_json(directory / "processor_config.json") or {}):
            missing.append("preprocessor_config.json")
    elif (info := class_info_file(directory)) and not (directory / info).is_file():
        missing.append(info)
    groups = _TOKENIZER_FILES.get(str(config.get("model_type", "")), ())
    if groups and not any(all((directory / f).is_file() for f in g) for g in groups):
        missing.append(" + ".join(groups[-1]))
    return missing


def missing_preset_files(name: str) -> list[str]:
    """The files a preset or Hugging Face id lacks in the models directory (empty if complete)."""
    preset = PRESETS.get(name)
    if preset is not None and preset.kind in ("sam", "open_clip"):
        return [] if (local_dir(name) / preset.filename).is_file() else [preset.filename]
    return missing_files(local_dir(name))


def is_present(name: str) -> bool:
    """Whether every file a preset or Hugging Face id needs is in the models directory."""
    return not missing_preset_files(name)


def missing_weights_message(*names: str) -> str:
    """One line telling the user which files are missing and how to provide them."""
    where = []
    for name in names:
        directory = local_dir(name)
        preset = PRESETS.get(name)
        missing = missing_preset_files(name)
        if preset is not None and preset.filename:
            where.append(f"{directory / preset.filename} not found")
        elif directory.is_dir() and missing:
            where.append(f"{directory} lacks {', '.join(missing)}")
        else:
            where.append(f"{directory} not found")
    return (
        f"missing weights for {', '.join(map(repr, names))}: {'; '.join(where)}. Run "
        f"`fiftyone-ssa models download {' '.join(names)}` (needs internet), or copy "
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


# What a load reads from a transformers repository; other files (TF / Flax / ONNX weights, the
# original framework's checkpoints such as OneFormer's detectron2 .pth) are not fetched.
_HF_LOAD_PATTERNS = ["*.json", "*.txt", "*.model"]


def _download_hf_repo(repo: str, directory: Path) -> None:
    """Fetches what a transformers load of ``repo`` needs into ``directory``.

    One set of weights (safetensors where the repository has them, else PyTorch's ``.bin``),
    configs and tokenizer files, and the class-info file a OneFormer processor config names
    from its ``repo_path`` dataset repository (transformers would fetch it into the Hugging Face
    cache when the processor is built; here it lands beside the model, read offline).
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = HfApi().list_repo_files(repo)
    if any(f.endswith(".safetensors") for f in files):
        weights_patterns = ["*.safetensors", "*.safetensors.index.json"]
    else:
        weights_patterns = ["pytorch_model*.bin", "*.bin.index.json"]
    snapshot_download(
        repo, local_dir=directory, allow_patterns=_HF_LOAD_PATTERNS + weights_patterns
    )
    info = class_info_file(directory)
    if info and not (directory / info).is_file():
        config = _read_json(directory / "preprocessor_config.json") or {}
        source = config.get("repo_path") or "shi-labs/oneformer_demo"
        try:
            hf_hub_download(source, info, repo_type="dataset", local_dir=directory)
        except Exception:  # as transformers does: then a model repository of that name
            hf_hub_download(source, info, local_dir=directory)


def _gated_hint(preset: Preset | None) -> str:
    """What a gated repository needs before a download, as a sentence (else empty)."""
    if preset is None or not preset.gated:
        return ""
    return (
        f"{preset.source} is gated: accept its licence at https://huggingface.co/{preset.source} "
        "and log in (`hf auth login` or $HF_TOKEN) first, or "
    )


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
        elif preset is not None and preset.kind == "open_clip":
            from huggingface_hub import hf_hub_download

            hf_hub_download(preset.source, preset.filename, local_dir=directory)
        else:
            _download_hf_repo(preset.source if preset is not None else name, directory)
    except Exception as err:  # network and hub errors of every kind
        if not any(directory.iterdir()):
            shutil.rmtree(directory, ignore_errors=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RuntimeError(
            f"could not download {name!r} into {directory}: {reason}. {_gated_hint(preset)}"
            "Copy the files there by hand on an offline machine"
        ) from None
    missing = missing_preset_files(name)
    if missing:
        raise RuntimeError(
            f"downloaded {name!r} into {directory}, but it lacks {', '.join(missing)}: the "
            "repository does not ship what a load needs; copy the missing files there by hand"
        )
    return resolve(name)
