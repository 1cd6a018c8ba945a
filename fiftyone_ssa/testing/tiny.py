"""Tiny models with random weights, saved the way real weights are and loaded back by the
project's own loaders: for tests, and for running the walkthrough where no real weights exist.

Every builder makes a real model class (segment-anything's ``Sam``, transformers' Segformer,
OneFormer, CLIPSeg and BLIP, open_clip's CLIP) from a config small enough to run on a CPU in
milliseconds, and saves it in the layout of its real weights: a SAM directory
(``sam_config.json`` + ``model.pt``, see :func:`~fiftyone_ssa.models.masks.sam_loader.save_sam`),
``save_pretrained`` directories with their processors (tokenizers built from small vocabulary
files, no download), an open_clip hub-style directory. Their outputs are meaningless (random
weights) except for :func:`~fiftyone_ssa.testing.tiny_sam.make_blob_segmenter`'s SAM (the SAM
builders are in :mod:`fiftyone_ssa.testing.tiny_sam`), whose weights are set so that every point
prompt segments a blob around the point.

:func:`save_tiny_models` writes one of each; pass its paths wherever a preset name goes::

    dirs = save_tiny_models("/tmp/tiny")
    apply_ssa(dataset, semantic_branch=str(dirs["semantic"]), mask_branch=str(dirs["sam"]))

The builders draw from torch's global random generator unless given a ``seed`` (then they draw
from a forked generator and leave the global one untouched).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fiftyone_ssa.testing.seeding import seeded

TINY_CLASSES = ["wall", "floor", "sky", "tree", "person"]
TINY_COCO_CLASSES = ["person", "wall-other-merged", "sky-other-merged", "tree-merged", "door-stuff"]

# Words the tiny BLIP can say, with the part of speech the tiny spaCy tagger gives them.
CAPTION_WORDS = {
    "a": "DET",
    "the": "DET",
    "it": "PRON",
    "on": "ADP",
    "of": "ADP",
    "with": "ADP",
    "red": "ADJ",
    "big": "ADJ",
    "small": "ADJ",
    "dog": "NOUN",
    "cat": "NOUN",
    "grass": "NOUN",
    "sky": "NOUN",
    "tree": "NOUN",
    "car": "NOUN",
    "road": "NOUN",
    "house": "NOUN",
    "person": "NOUN",
    "wall": "NOUN",
    "water": "NOUN",
}
BLIP_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]

# open_clip architecture registered for checkpoint-file use.
TINY_CLIP_ARCHITECTURE = "tiny-clip-ssa-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map of the 256 byte values to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer_files(directory: str | os.PathLike, words: Sequence[str] = ()) -> int:
    """A small byte-level BPE vocabulary for transformers' CLIPTokenizer (no download).

    Every single byte character gets an id (bare and with CLIP's ``</w>`` suffix), so any
    ASCII text tokenises, with no merges needed.

    Args:
        directory: where ``vocab.json`` and ``merges.txt`` are written (it must exist).
        words: unused; kept for callers that pass a word list.

    Returns:
        The vocabulary size.
    """
    directory = Path(directory)
    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def save_tiny_segformer(
    directory: str | os.PathLike,
    classes: Sequence[str] = TINY_CLASSES,
    image_size: int = 64,
    seed: int | None = None,
) -> Path:
    """A 1-stage-per-block Segformer with random weights, saved with its image processor.

    Args:
        directory: the ``save_pretrained`` directory (created).
        classes: ``id2label`` in order.
        image_size: the processor's square input size.
        seed: see the module docstring.

    Returns:
        The directory.
    """
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    with seeded(seed):
        model = SegformerForSemanticSegmentation(config)
    model.save_pretrained(directory)
    SegformerImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(
        directory
    )
    return Path(directory)


def save_tiny_oneformer(
    directory: str | os.PathLike, classes: Sequence[str] = TINY_CLASSES, image_size: int = 64
) -> Path:
    """A 1-block-per-stage Swin OneFormer with random weights, saved with its processor.

    The processor resizes the shorter side to ``image_size`` and tokenises the task prompt with
    a CLIPTokenizer built from a byte-level vocabulary (no download).
    """
    from transformers import (
        CLIPTokenizer,
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        OneFormerProcessor,
        SwinConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = write_clip_tokenizer_files(directory)
    backbone = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = OneFormerConfig(
        backbone_config=backbone,
        num_queries=4,
        hidden_dim=32,
        conv_dim=32,
        mask_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        dim_feedforward=32,
        num_attention_heads=2,
        text_encoder_width=16,
        text_encoder_num_layers=1,
        text_encoder_vocab_size=vocab_size,
        text_encoder_proj_layers=1,
        text_encoder_n_ctx=2,
        text_encoder_context_length=16,
        query_dec_layers=1,
        task_seq_len=16,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    OneFormerForUniversalSegmentation(config).save_pretrained(directory)
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    image_processor = OneFormerImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": 2 * image_size}, num_text=2
    )
    OneFormerProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        max_seq_length=16,
        task_seq_length=16,
    ).save_pretrained(directory)
    return directory


def save_tiny_clipseg(directory: str | os.PathLike, image_size: int = 32) -> Path:
    """A 2-layer CLIPSeg with random weights, saved with its processor (ViT + CLIPTokenizer)."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = write_clip_tokenizer_files(directory)
    config = CLIPSegConfig(
        text_config={
            "vocab_size": n,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": n - 2,
            "eos_token_id": n - 1,
            "pad_token_id": n - 1,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
        conditional_layer=0,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(directory)
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    image_processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        directory
    )
    return directory


def save_tiny_blip(directory: str | os.PathLike, image_size: int = 32) -> Path:
    """A 1-layer BLIP captioner with random weights over :data:`CAPTION_WORDS`.

    Weights are initialised with a large spread so that captions depend on the image.
    """
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = [*BLIP_SPECIAL_TOKENS, *CAPTION_WORDS]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]")
    ids = {w: i for i, w in enumerate(words)}
    config = BlipConfig(
        text_config={
            "vocab_size": len(words),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 16,
            "max_position_embeddings": 32,
            "initializer_range": 0.5,
            "bos_token_id": ids["[DEC]"],
            "pad_token_id": ids["[PAD]"],
            "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"],
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            "initializer_range": 0.5,
        },
        projection_dim=16,
        initializer_range=0.5,
    )
    BlipForConditionalGeneration(config).save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def save_tiny_open_clip(directory: str | os.PathLike) -> Path:
    """A tiny open_clip CLIP in the hub layout: ``open_clip_config.json`` + weights file."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = open_clip.model.CLIP(**{k: v for k, v in TINY_CLIP_CONFIG.items()})
    (directory / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": TINY_CLIP_CONFIG,
                "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
            }
        )
    )
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


def register_tiny_clip_architecture(directory: str | os.PathLike) -> str:
    """Registers :data:`TINY_CLIP_CONFIG` with open_clip; returns its architecture name."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{TINY_CLIP_ARCHITECTURE}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    if TINY_CLIP_ARCHITECTURE not in open_clip.list_models():
        open_clip.add_model_config(directory / f"{TINY_CLIP_ARCHITECTURE}.json")
    return TINY_CLIP_ARCHITECTURE


def _toy_parser(doc):
    """Attaches determiners and adjectives to the next noun; nouns head themselves (ROOT)."""
    heads = list(range(len(doc)))
    deps = ["ROOT"] * len(doc)
    next_noun = None
    for i in range(len(doc) - 1, -1, -1):
        pos = doc[i].pos_
        if pos in ("NOUN", "PROPN", "PRON"):
            next_noun = i
        elif next_noun is not None and pos in ("ADJ", "DET"):
            heads[i] = next_noun
            deps[i] = "amod" if pos == "ADJ" else "det"
        else:
            deps[i] = "dep"
    for i, token in enumerate(doc):
        token.head = doc[heads[i]]
        token.dep_ = deps[i]
    return doc


def _register_toy_parser() -> None:
    from spacy.language import Language

    if not Language.has_factory("ssa_toy_parser"):
        Language.component("ssa_toy_parser", func=_toy_parser)


def build_tiny_spacy(kind: str = "parser"):
    """A small English spaCy pipeline that knows the words of :data:`CAPTION_WORDS`.

    Args:
        kind: ``"parser"`` (POS tags + dependency arcs: real noun chunks), ``"tagger"`` (POS
            tags only) or ``"blank"`` (tokenizer only).
    """
    import spacy

    if kind not in ("parser", "tagger", "blank"):
        raise ValueError(f"Expected kind parser|tagger|blank, but got {kind!r}")
    nlp = spacy.blank("en")
    if kind == "blank":
        return nlp
    ruler = nlp.add_pipe("attribute_ruler")
    by_pos: dict[str, list[str]] = {}
    for word, pos in CAPTION_WORDS.items():
        by_pos.setdefault(pos, []).append(word)
    for pos, words in by_pos.items():
        ruler.add([[{"LOWER": {"IN": words}}]], {"POS": pos})
    if kind == "parser":
        _register_toy_parser()
        nlp.add_pipe("ssa_toy_parser")
    return nlp


def save_tiny_engine_models(directory: str | os.PathLike, seed: int | None = 0) -> dict[str, Path]:
    """Every tiny SSA-engine model saved under ``directory``.

    Args:
        directory: created if needed.
        seed: see the module docstring; the models are built in a fixed order from it.

    Returns:
        ``{"ade", "coco", "blip", "clip", "clipseg", "spacy"}`` -> directory. Load the spaCy
        pipeline in the same process that called :func:`build_tiny_spacy` (its parser is a
        registered Python function), or pass ``build_tiny_spacy()`` itself.
    """
    root = Path(directory)
    with seeded(seed):
        dirs = {
            "ade": save_tiny_oneformer(root / "oneformer_ade", TINY_CLASSES),
            "coco": save_tiny_oneformer(root / "oneformer_coco", TINY_COCO_CLASSES),
            "blip": save_tiny_blip(root / "blip"),
            "clip": save_tiny_open_clip(root / "open_clip"),
            "clipseg": save_tiny_clipseg(root / "clipseg"),
        }
    build_tiny_spacy("parser").to_disk(root / "spacy")
    dirs["spacy"] = root / "spacy"
    return dirs


def save_tiny_models(
    directory: str | os.PathLike, seed: int = 0, sam_image_size: int = 256
) -> dict[str, Path]:
    """One tiny model for every role SSA and SSA-engine have, saved under ``directory``.

    Args:
        directory: created if needed.
        seed: seeds every model (torch's global generator is left untouched).
        sam_image_size: SAM's input size (1024 for real SAMs; smaller is faster on a CPU).

    Returns:
        ``"sam"`` (a blob-segmenting SAM, for ``mask_branch``), ``"semantic"`` (a Segformer over
        :data:`TINY_CLASSES`, for ``semantic_branch``) and the engine models of
        :func:`save_tiny_engine_models` (``"ade"``, ``"coco"``, ``"blip"``, ``"clip"``,
        ``"clipseg"``, ``"spacy"``), each a path.
    """
    from fiftyone_ssa.testing.tiny_sam import TINY_SAM_CONFIG, save_tiny_sam

    root = Path(directory)
    sam_config = {**TINY_SAM_CONFIG, "image_size": sam_image_size}
    return {
        "sam": save_tiny_sam(root / "sam", sam_config, blobs=True, seed=seed),
        "semantic": save_tiny_segformer(root / "segformer", seed=seed),
        **save_tiny_engine_models(root / "engine", seed=seed),
    }
