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
    parser.add_argument("--name", default="ssa-demo", help="dataset name (replaced)")
    parser.add_argument("--semantic-branch", default=None)
    parser.add_argument("--mask-branch", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--mask-option", action="append", metavar="KEY=VALUE")
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
