"""``fiftyone-ssa engine``: SSA-engine (open-vocabulary names and proposals) over a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from fiftyone_ssa.cli.common import (
    add_run_arguments,
    add_target_arguments,
    backend_options,
    load_samples,
    names_in_file,
    parse_mask_options,
    run_on_ranks,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="name every mask with an open-vocabulary class and top-k proposals (SSA-engine)",
        description="Run SSA-engine: OneFormer ADE20K/COCO names and BLIP caption nouns are "
        "ranked by CLIP on each mask's crop (top-k -> class_proposals) and CLIPSeg picks the "
        "class_name. Writes <label-field> Detections (and <label-field>_seg with "
        "--write-segmentation). Every model takes a preset, Hugging Face id or local path.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--mask-branch",
        default="sam-vit-h",
        help="sam-vit-b|l|h, a SAM checkpoint/directory or field:<name> (e.g. "
        "SA-1B masks imported with import-sa1b) (default: %(default)s)",
    )
    parser.add_argument(
        "--light",
        action="store_true",
        help="light models (OneFormer Swin-T ADE20K, BLIP base, CLIP ViT-B/32, "
        "CLIPSeg rd16) and 16 SAM points per side",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="class proposals per mask (default: %(default)s)"
    )
    parser.add_argument(
        "--vocabulary",
        nargs="+",
        metavar="NAME_OR_FILE",
        help="class names added to every mask's candidates; a value naming a "
        "file is read as one name per line (# starts a comment)",
    )
    parser.add_argument(
        "--restrict-vocabulary",
        action="store_true",
        help="every mask gets one of the --vocabulary names only",
    )
    parser.add_argument(
        "--spacy-model",
        default="en_core_web_sm",
        help="spaCy pipeline name or path for caption nouns (default: %(default)s)",
    )
    parser.add_argument(
        "--ade-model",
        help="ADE20K semantic branch (default: oneformer-ade20k-swin-large, -tiny with --light)",
    )
    parser.add_argument(
        "--coco-model", help="COCO panoptic semantic branch (default: oneformer-coco-swin-large)"
    )
    parser.add_argument(
        "--captioner", help="BLIP model (default: blip-large, blip-base with --light)"
    )
    parser.add_argument(
        "--clip-model",
        help="open_clip model: preset, directory or checkpoint "
        "(default: clip-vit-l-14, clip-vit-b-32 with --light)",
    )
    parser.add_argument(
        "--clip-architecture", help="open_clip architecture of a --clip-model checkpoint file"
    )
    parser.add_argument(
        "--clipseg-model",
        help="CLIPSeg model (default: clipseg-rd64-refined, clipseg-rd16 with --light)",
    )
    parser.add_argument(
        "--decider",
        choices=["clipseg", "sam3"],
        default="clipseg",
        help="what picks each mask's class among its proposals: CLIPSeg on the 1.6x crop (the "
        "original's) or SAM 3, the proposal whose concept covers most of the mask "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--sam3-model", help="SAM 3 model for --decider sam3 (default: the sam3 preset)"
    )
    parser.add_argument(
        "--write-segmentation",
        action="store_true",
        help="also write <label-field>_seg painted from the labelled masks",
    )
    parser.add_argument(
        "--mask-option",
        action="append",
        metavar="KEY=VALUE",
        help="SAM mask generator setting, a number, e.g. points_per_side=16 (repeatable; "
        "defaults: points_per_side=32 (16 with --light), crop_n_layers=0, "
        "pred_iou_thresh=0.86, stability_score_thresh=0.92, min_mask_region_area=100)",
    )
    add_run_arguments(parser, "ssa_engine", "images whose masks go through the models together")
    parser.set_defaults(func=run)


def read_vocabulary(values: list[str] | None) -> list[str]:
    """Class names from the command line: names, or UTF-8 files of one name per line (a
    byte-order mark, as Windows editors write, is dropped).

    A value is taken for a path, and must name a file, when it ends in ``.txt`` or has a
    directory part that exists (``cup/mug`` stays a name unless ``./cup`` exists).

    Raises:
        ValueError: a value taken for a path that names a directory or nothing.
    """
    names: list[str] = []
    for value in values or []:
        path = Path(value).expanduser()
        meant_as_path = value.endswith(".txt") or (
            path.parent != Path(".") and path.parent.is_dir()
        )
        if meant_as_path and not path.is_file():
            what = "a directory" if path.is_dir() else "no such file"
            raise ValueError(f"--vocabulary {value!r}: {what}, expected a file of names")
        if path.is_file():
            names.extend(names_in_file(path))
        else:
            names.append(value)
    return names


def run(args: argparse.Namespace) -> int:
    from fiftyone_ssa.labelling.engine import apply_ssa_engine

    vocabulary = read_vocabulary(args.vocabulary)
    if args.restrict_vocabulary and not vocabulary:
        raise ValueError("--restrict-vocabulary needs --vocabulary names or a vocabulary file")
    models = {
        "ade": args.ade_model,
        "coco": args.coco_model,
        "captioner": args.captioner,
        "clip": args.clip_model,
        "clip_architecture": args.clip_architecture,
        "clipseg": args.clipseg_model,
        "sam3": args.sam3_model,
    }
    samples = load_samples(args.dataset, args.view_tag, args.limit)
    return run_on_ranks(
        lambda: apply_ssa_engine(
            samples,
            label_field=args.label_field,
            mask_branch=args.mask_branch,
            light=args.light,
            top_k=args.top_k,
            vocabulary=vocabulary,
            vocabulary_mode="restrict" if args.restrict_vocabulary else "add",
            spacy_model=args.spacy_model,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            skip_existing=args.skip_existing,
            resume=not args.no_resume,
            discard_reviews=args.discard_reviews,
            overwrite=args.overwrite,
            skip_failures=not args.fail_fast,
            write_segmentation=args.write_segmentation,
            progress=True,
            **backend_options(args),
            models={k: v for k, v in models.items() if v is not None},
            decider=args.decider,
            **parse_mask_options(args.mask_option),
        )
    )
