"""``fiftyone-ssa demo``: label scikit-image's sample photos with SSA."""

from __future__ import annotations

import argparse

from fiftyone_ssa.cli.common import parse_mask_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build a small dataset of sample photos and run SSA on it",
        description="Builds a FiftyOne dataset from scikit-image's sample photos, runs SSA "
        "with the default models (a light preset without a GPU) and prints a summary.",
    )
    parser.add_argument(
        "--name",
        default="ssa-demo",
        help="dataset name, replaced if it exists (default: %(default)s)",
    )
    parser.add_argument(
        "--semantic-branch",
        default=None,
        help="as in `run` (default: segformer-b5-ade20k; segformer-b0-ade20k without a GPU)",
    )
    parser.add_argument(
        "--mask-branch",
        default=None,
        help="as in `run` (default: sam-vit-h; without a GPU sam-vit-b with "
        "points_per_side=16, crop_n_layers=0)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument(
        "--mask-option",
        action="append",
        metavar="KEY=VALUE",
        help="SAM mask generator setting, as in `run` (repeatable)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch missing preset weights first (needs internet)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fiftyone_ssa.demo import run_demo

    run_demo(
        name=args.name,
        semantic_branch=args.semantic_branch,
        mask_branch=args.mask_branch,
        device=args.device,
        mask_options=parse_mask_options(args.mask_option),
        download=args.download,
    )
    return 0
