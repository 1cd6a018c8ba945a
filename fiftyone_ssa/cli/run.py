"""``fiftyone-ssa run``: SSA close-set over a dataset."""

from __future__ import annotations

import argparse

from fiftyone_ssa.cli.common import (
    add_class_arguments,
    add_run_arguments,
    add_target_arguments,
    backend_options,
    load_samples,
    parse_mask_options,
    read_classes,
    run_on_ranks,
)
from fiftyone_ssa.fields import (
    DEFAULT_MASK_BRANCH,
    DEFAULT_SEMANTIC_BRANCH,
    LIGHT_MASK_BRANCH,
    LIGHT_MASK_OPTIONS,
    LIGHT_SEMANTIC_BRANCH,
    ssa_branches,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="label SAM masks with a semantic branch (SSA close-set)",
        description="Run SSA close-set: every mask of the mask branch gets the class most of "
        "its pixels have in the semantic branch; writes <label-field>, <label-field>_masks and "
        "<label-field>_branch.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--light",
        action="store_true",
        help=f"the light CPU preset for the branches not given: {LIGHT_SEMANTIC_BRANCH} and "
        f"{LIGHT_MASK_BRANCH} at {LIGHT_MASK_OPTIONS['points_per_side']} points per side, "
        "no crop layers (--mask-option still overrides)",
    )
    parser.add_argument(
        "--semantic-branch",
        help="preset, Hugging Face id, local directory or field:<name> (an existing "
        f"Segmentation field) (default: {DEFAULT_SEMANTIC_BRANCH}, "
        f"{LIGHT_SEMANTIC_BRANCH} with --light)",
    )
    parser.add_argument(
        "--mask-branch",
        help="a mask preset (fiftyone-ssa models list), a SAM checkpoint/directory or "
        "field:<name> (a Detections field with instance masks) "
        f"(default: {DEFAULT_MASK_BRANCH}, {LIGHT_MASK_BRANCH} with --light)",
    )
    add_class_arguments(parser)
    parser.add_argument(
        "--no-branch-field", action="store_true", help="do not write <label-field>_branch"
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="class proposals per mask (default: %(default)s)"
    )
    parser.add_argument(
        "--mask-option",
        action="append",
        metavar="KEY=VALUE",
        help="SAM mask generator setting, a number, e.g. points_per_side=32 (repeatable; "
        "defaults: points_per_side=64, pred_iou_thresh=0.86, stability_score_thresh=0.92, "
        "crop_n_layers=1, crop_n_points_downscale_factor=2, min_mask_region_area=100)",
    )
    add_run_arguments(parser, "ssa", "images per semantic-branch call")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fiftyone_ssa.labelling.ssa import apply_ssa

    samples = load_samples(args.dataset, args.view_tag, args.limit)
    semantic_branch, mask_branch, mask_options = ssa_branches(
        args.semantic_branch, args.mask_branch, parse_mask_options(args.mask_option), args.light
    )
    return run_on_ranks(
        lambda: apply_ssa(
            samples,
            label_field=args.label_field,
            semantic_branch=semantic_branch,
            mask_branch=mask_branch,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            skip_existing=args.skip_existing,
            resume=not args.no_resume,
            discard_reviews=args.discard_reviews,
            overwrite=args.overwrite,
            write_branch=not args.no_branch_field,
            top_k=args.top_k,
            classes=read_classes(args, samples),
            skip_failures=not args.fail_fast,
            progress=True,
            **backend_options(args),
            **mask_options,
        )
    )
