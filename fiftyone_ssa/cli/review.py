"""``fiftyone-ssa review ACTION``: reviewing SSA's labels.

``queue``: save the view of the masks most likely wrong (highest ``review_score``).
Each action is one ``_add_<action>_parser(actions)`` registering its parser and its ``run``.
"""

from __future__ import annotations

import argparse

from fiftyone_ssa.fields import DEFAULT_REVIEW_FIELD, DEFAULT_REVIEW_SIZE, REVIEW_BY


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("review", help="review labels: the review queue")
    actions = parser.add_subparsers(dest="review_command", metavar="ACTION")
    _add_queue_parser(actions)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser


def _add_queue_parser(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "queue",
        help="save a view of the masks most likely wrong",
        description=(
            "Saves on the dataset a view of the N masks of a Detections field that SSA or "
            "SSA-engine wrote with the highest review_score (most likely wrong first; masks "
            "marked reviewed are left out), as patches (--by masks) or as the samples holding "
            "them (--by samples). The App lists it in its view bar. Prints the view's name "
            "and how many patches or samples it holds."
        ),
    )
    parser.add_argument("dataset", help="name of a FiftyOne dataset")
    parser.add_argument(
        "--field",
        default=DEFAULT_REVIEW_FIELD,
        help=f"the Detections field to review (default: {DEFAULT_REVIEW_FIELD})",
    )
    parser.add_argument(
        "-n",
        "--n",
        type=int,
        default=DEFAULT_REVIEW_SIZE,
        help=f"how many masks (default: {DEFAULT_REVIEW_SIZE})",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="only masks of this class (repeat for several)",
    )
    parser.add_argument(
        "--by", choices=REVIEW_BY, default="masks", help="patches (masks) or samples"
    )
    parser.add_argument(
        "--name", default=None, help="the saved view's name (default: review-<field>[-samples])"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a saved view of that name even if it is not a review queue",
    )
    parser.set_defaults(func=run_queue)


def run_queue(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.labelling.review_queue import review_queue

    dataset = load_samples(args.dataset)
    view = review_queue(
        dataset,
        label_field=args.field,
        n=args.n,
        classes=args.classes,
        by=args.by,
        name=args.name,
        overwrite=args.overwrite,
    )
    what = "masks" if args.by == "masks" else "samples"
    print(f"saved view {view.name!r} on dataset {dataset.name!r}: {len(view)} {what}")
    return 0
