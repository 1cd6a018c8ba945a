"""Real-size models with random weights, built from the presets' kept configs.

Weights are not needed to measure speed or memory, and cannot be downloaded on offline
machines. ``fiftyone_ssa/testing/configs/<preset>.json`` keeps, for each transformers preset,
the model's config dict, its processor's settings and the tokenizer it needs; SAM's sizes are
:data:`fiftyone_ssa.models.masks.sam_loader.SAM_ARCHITECTURES` and CLIP's are open_clip's own
configs. :func:`save_random_model` writes a preset with seeded random weights into a directory
in the layout its real weights have, so that it loads through the project's real loaders
(``create_branch``, ``BlipCaptioner``, ``ClipFilter``, ``ClipSegDecider``, ``load_sam_branch``).

Tokenizers are built offline: CLIP's byte-level BPE from the vocabulary open_clip ships (the same
vocabulary as the hub's ``vocab.json`` / ``merges.txt``), and a BERT word-piece vocabulary of the
real size (30522) whose words come from that BPE vocabulary.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import torch

from fiftyone_ssa.models import weights

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# BERT's special tokens and their ids in bert-base-uncased.
_BERT_SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
_BERT_SIZE = 30522


def list_model_configs() -> list[str]:
    """Names of the presets with a kept config (transformers models only)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def random_model_presets() -> list[str]:
    """Every preset :func:`save_random_model` can build (configs, SAM sizes, CLIP models)."""
    kinds = ("sam", "open_clip")
    kept = list_model_configs()
    extra = [
        name
        for name, preset in weights.PRESETS.items()
        if preset.kind in kinds or preset.files_of in kept  # another preset's files
    ]
    return sorted({*kept, *extra})


def load_model_config(name: str) -> dict[str, Any]:
    """The kept config of a preset.

    Args:
        name: a preset name with a file in :data:`CONFIG_DIR` (see :func:`list_model_configs`).

    Returns:
        ``{"preset", "family", "source", "model", "processor", "tokenizer", ...}``.
    """
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(
            f"Expected a preset with a kept config among {', '.join(list_model_configs())}, but "
            f"got {name!r}"
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Tokenizers


def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, as the hub's ``vocab.json`` and ``merges.txt`` hold them."""
    import open_clip
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: str | os.PathLike):
    """Writes CLIP's ``vocab.json`` + ``merges.txt``; returns the loaded ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_bpe()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def write_bert_tokenizer(directory: str | os.PathLike):
    """Writes a 30522-entry BERT ``vocab.txt`` (real words); returns the ``BertTokenizer``.

    The special tokens sit at bert-base-uncased's ids; the other entries are whole words from
    CLIP's vocabulary, so captions of a random model decode to words.
    """
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, _ = _clip_bpe()
    words = [t[: -len("</w>")] for t in vocab if t.endswith("</w>") and t[:-4].isalpha()]
    words = list(dict.fromkeys(w.lower() for w in words))
    entries, source = [], iter(words)
    for i in range(_BERT_SIZE):
        entries.append(_BERT_SPECIAL.get(i) or next(source, f"[unused{i}]"))
    (directory / "vocab.txt").write_text("\n".join(entries) + "\n")
    return BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]")


# ---------------------------------------------------------------------------------------------
# Models


def _merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_model_config(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """The full config of any preset :func:`save_random_model` builds, with overrides.

    Args:
        name: a preset among :func:`random_model_presets`.
        overrides: merged into the config key by key (nested dicts too), e.g.
            ``{"model": {"text_config": {"num_hidden_layers": 1}}, "processor": {...}}``;
            smaller variants for tests and quick benchmarks.

    Returns:
        ``{"preset", "family", "model", "processor", "tokenizer", ...}``; ``family`` is also
        ``"sam"`` (``model`` = a ``sam_loader`` config) or ``"open_clip"`` (``model`` = an
        open_clip model config).
    """
    preset = weights.PRESETS.get(name)
    if preset is not None and preset.kind == "sam":
        from fiftyone_ssa.models.masks.sam_loader import SAM_ARCHITECTURES

        model = {"name": preset.architecture, **SAM_ARCHITECTURES[preset.architecture]}
        config = {"preset": name, "family": "sam", "model": model, "processor": {}}
    elif preset is not None and preset.kind == "open_clip":
        import open_clip

        model = dict(open_clip.get_model_config(preset.architecture))
        if preset.source.endswith(".openai"):
            model["quick_gelu"] = True  # OpenAI's weights were trained with QuickGELU
        config = {"preset": name, "family": "open_clip", "model": model, "processor": {}}
    else:  # a preset reading another's files (sam3-tracker: sam3's) is built as that one
        config = load_model_config(preset.files_of if preset and preset.files_of else name)
    return _merge(config, overrides or {})


def build_random_model(name: str, overrides: dict | None = None) -> torch.nn.Module:
    """A real-size model of a preset with random weights, on the CPU in eval mode.

    Build it under ``torch.device("meta")`` to count parameters without allocating them
    (transformers and SAM models).

    Args:
        name: a preset among :func:`random_model_presets`.
        overrides: see :func:`resolve_model_config`.

    Returns:
        A transformers model, a segment-anything ``Sam`` or an open_clip ``CLIP``.
    """
    config = resolve_model_config(name, overrides)
    family, model_config = config["family"], dict(config["model"])
    model_config.pop("model_type", None)
    if family == "sam":
        from fiftyone_ssa.models.masks.sam_loader import build_sam

        return build_sam(model_config)
    if family == "open_clip":
        import open_clip

        return open_clip.model.CLIP(**model_config).eval()
    if family == "segformer":
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        model = SegformerForSemanticSegmentation(SegformerConfig(**model_config))
    elif family == "oneformer":
        from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

        backbone = dict(model_config.pop("backbone_config"))
        backbone.pop("model_type", None)
        model = OneFormerForUniversalSegmentation(
            OneFormerConfig(backbone_config=SwinConfig(**backbone), **model_config)
        )
    elif family == "mask2former":
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

        backbone = dict(model_config.pop("backbone_config"))
        backbone.pop("model_type", None)
        model = Mask2FormerForUniversalSegmentation(
            Mask2FormerConfig(backbone_config=SwinConfig(**backbone), **model_config)
        )
    elif family == "eomt":
        from transformers import EomtConfig, EomtForUniversalSegmentation

        model = EomtForUniversalSegmentation(EomtConfig(**model_config))
    elif family == "clipseg":
        from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

        model = CLIPSegForImageSegmentation(CLIPSegConfig(**model_config))
    elif family == "blip":
        from transformers import BlipConfig, BlipForConditionalGeneration

        # BlipVisionConfig's default initializer_range is 1e-10: its random vision weights would
        # be ~0, every crop would embed alike and every caption be the same. Trained weights
        # are nothing like that; draw them at the text side's scale.
        vision = {"initializer_range": 0.02, **model_config.get("vision_config", {})}
        model = BlipForConditionalGeneration(
            BlipConfig(**{**model_config, "vision_config": vision})
        )
    elif family in _SAM_FAMILY:
        import transformers

        config_cls, model_cls = (getattr(transformers, n) for n in _SAM_FAMILY[family])
        model = model_cls(config_cls(**model_config))
    else:
        raise ValueError(f"Expected a known model family for {name}, but got {family!r}")
    return model.eval()


# The transformers SAM family (mask branches): family -> (config class, model class), the
# classes of the hub repositories' config.json (SAM 2.1: model_type sam2_video).
_SAM_FAMILY = {
    "sam2": ("Sam2VideoConfig", "Sam2VideoModel"),
    "edgetam": ("EdgeTamConfig", "EdgeTamModel"),
    "samhq": ("SamHQConfig", "SamHQModel"),
    "sam3": ("Sam3VideoConfig", "Sam3VideoModel"),  # facebook/sam3: detector + tracker
}


def _save_processor(config: dict, directory: Path) -> None:
    family, settings = config["family"], config["processor"]
    if family == "segformer":
        from transformers import SegformerImageProcessor

        SegformerImageProcessor(**settings).save_pretrained(directory)
    elif family == "oneformer":
        from transformers import OneFormerImageProcessor, OneFormerProcessor

        OneFormerProcessor(
            image_processor=OneFormerImageProcessor(**settings["image_processor"]),
            tokenizer=write_clip_tokenizer(directory),
            max_seq_length=settings["max_seq_length"],
            task_seq_length=settings["task_seq_length"],
        ).save_pretrained(directory)
    elif family == "mask2former":
        from transformers import Mask2FormerImageProcessor

        Mask2FormerImageProcessor(**settings).save_pretrained(directory)
    elif family == "eomt":
        from transformers import EomtImageProcessor

        EomtImageProcessor(**settings).save_pretrained(directory)
    elif family == "clipseg":
        from transformers import CLIPSegProcessor, ViTImageProcessor

        CLIPSegProcessor(
            image_processor=ViTImageProcessor(**settings),
            tokenizer=write_clip_tokenizer(directory),
        ).save_pretrained(directory)
    elif family in ("sam2", "edgetam"):
        from transformers import Sam2ImageProcessor

        Sam2ImageProcessor(**settings).save_pretrained(directory)
    elif family == "samhq":
        from transformers import SamImageProcessor

        SamImageProcessor(**settings).save_pretrained(directory)
    elif family == "sam3":
        from transformers import Sam3ImageProcessor, Sam3Processor

        Sam3Processor(
            image_processor=Sam3ImageProcessor(**settings["image_processor"]),
            tokenizer=write_clip_tokenizer(directory),
            target_size=settings["target_size"],
            point_pad_value=settings["point_pad_value"],
        ).save_pretrained(directory)
    elif family == "blip":
        from transformers import BlipImageProcessor, BlipProcessor

        BlipProcessor(
            image_processor=BlipImageProcessor(**settings),
            tokenizer=write_bert_tokenizer(directory),
        ).save_pretrained(directory)


def save_random_model(
    name: str, directory: str | os.PathLike, seed: int = 0, overrides: dict | None = None
) -> Path:
    """Writes a preset with seeded random weights, in the layout its real weights have.

    The result loads with the project's loaders: a saved transformers repository (model,
    processor, tokenizer) for Segformer, OneFormer, Mask2Former, EoMT, CLIPSeg and BLIP;
    ``sam_config.json`` + ``model.pt`` for SAM (``load_sam_branch``); open_clip's hub layout
    (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) for CLIP (``ClipFilter``).

    Args:
        name: a preset among :func:`random_model_presets`.
        directory: created if needed.
        seed: seeds the weights.
        overrides: see :func:`resolve_model_config` (smaller variants).

    Returns:
        The directory.
    """
    if name not in random_model_presets():
        raise ValueError(
            f"Expected a preset among {', '.join(random_model_presets())}, but got {name!r}"
        )
    config = resolve_model_config(name, overrides)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_random_model(name, overrides)
    if config["family"] == "sam":
        from fiftyone_ssa.models.masks.sam_loader import save_sam

        save_sam(model, directory, config["model"])
    elif config["family"] == "open_clip":
        (directory / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": config["model"], "preprocess_cfg": config["processor"]})
        )
        torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    else:
        model.save_pretrained(directory)
        _save_processor(config, directory)
    return directory
