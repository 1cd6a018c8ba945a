"""``fiftyone-ssa review ACTION``: reviewing SSA's labels.

``queue``: save the view of the masks most likely wrong (highest ``review_score``); ``apply``:
fold a person's corrections of a run's masks back in; ``report``: what the review changed;
``send`` / ``load``: review the masks in Label Studio (FiftyOne's annotation API).
Each action is one ``_add_<action>_parser(actions)`` registering its parser and its ``run``.
"""

from __future__ import annotations

import argparse

from fiftyone_ssa.cli.common import add_target_arguments
from fiftyone_ssa.fields import DEFAULT_REVIEW_FIELD, DEFAULT_REVIEW_SIZE, REVIEW_BY

_FIELD_HELP = (
    "the Detections field the run wrote: SSA's <label_field>_masks, SSA-engine's "
    "<label_field> (default: %(default)s)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review",
        help=(
            "review labels: the queue of doubtful masks, applying corrections, the report, "
            "Label Studio"
        ),
    )
    actions = parser.add_subparsers(dest="review_command", metavar="ACTION")
    _add_queue_parser(actions)
    _add_apply_parser(actions)
    _add_report_parser(actions)
    _add_send_parser(actions)
    _add_load_parser(actions)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


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
    parser.add_argument("--label-field", default=DEFAULT_REVIEW_FIELD, help=_FIELD_HELP)
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


def _add_apply_parser(actions: argparse._SubParsersAction) -> None:
    apply = actions.add_parser(
        "apply",
        help="mark corrected masks and repaint the Segmentation from them",
        description=(
            "After masks of a run's Detections field were relabelled, deleted, added or "
            "reshaped (e.g. in the App's annotation mode): marks the corrected masks "
            "(reviewed=True, label_before_review), repaints the run's Segmentation from the "
            "corrected masks with the run's painting rule, and keeps the map as the run "
            "painted it in <segmentation>_before_review. Masks nobody changed are not touched; "
            "later runs keep reviewed samples unless given --discard-reviews."
        ),
    )
    add_target_arguments(apply)
    apply.add_argument("--label-field", default=DEFAULT_REVIEW_FIELD, help=_FIELD_HELP)
    apply.set_defaults(func=run_apply)


def _add_report_parser(actions: argparse._SubParsersAction) -> None:
    report = actions.add_parser(
        "report",
        help="what the review changed per class, and mIoU before and after",
        description=(
            "Per class of the run: its masks, how many a person relabelled, deleted, reshaped "
            "or added; the pairs (run's label -> reviewed label); with --gt, mIoU of the run's "
            "Segmentation before and after review on the reviewed samples with ground truth."
        ),
    )
    add_target_arguments(report)
    report.add_argument("--label-field", default=DEFAULT_REVIEW_FIELD, help=_FIELD_HELP)
    report.add_argument("--gt", default=None, metavar="FIELD", help="ground-truth Segmentation")
    report.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="ground-truth value whose pixels are excluded (default: 255)",
    )
    report.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ADE20K raw annotations: ground truth 0 ignored, other values minus one",
    )
    report.set_defaults(func=run_report)


_SERVER_HELP = (
    "the Label Studio server's URL (default: FiftyOne's annotation config, "
    "FIFTYONE_LABELSTUDIO_URL); its API key is read from FIFTYONE_LABELSTUDIO_API_KEY"
)


def _add_send_parser(actions: argparse._SubParsersAction) -> None:
    send = actions.add_parser(
        "send",
        help="send masks to Label Studio for a person to relabel or delete",
        description=(
            "Sends the masks of a saved review queue (--queue) or of the dataset's samples to "
            "a Label Studio server with FiftyOne's annotation API (annotate, backend "
            "labelstudio): one task per sample, one brush region per mask, the masks' labels "
            "and class proposals as the choices. Load the person's edits with `review load`."
        ),
    )
    add_target_arguments(send)
    send.add_argument("anno_key", help="the annotation run's key (a Python identifier)")
    send.add_argument("--label-field", default=DEFAULT_REVIEW_FIELD, help=_FIELD_HELP)
    send.add_argument(
        "--queue", default=None, metavar="VIEW", help="a saved review queue (e.g. review-ssa_masks)"
    )
    send.add_argument("--url", default=None, help=_SERVER_HELP)
    send.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="CLASS",
        help="another class to offer (repeat for several)",
    )
    send.set_defaults(func=run_send)


def _add_load_parser(actions: argparse._SubParsersAction) -> None:
    load = actions.add_parser(
        "load",
        help="load the edits made in Label Studio and apply them",
        description=(
            "Loads what a person submitted in Label Studio for an annotation run of `review "
            "send` (relabelled and deleted masks; regions drawn there are added masks) and "
            "applies it as `review apply` does."
        ),
    )
    load.add_argument("dataset", help="name of a FiftyOne dataset")
    load.add_argument("anno_key", help="the key given to `review send`")
    load.add_argument("--label-field", default=DEFAULT_REVIEW_FIELD, help=_FIELD_HELP)
    load.add_argument("--url", default=None, help="the server's URL (default: the run's)")
    load.add_argument(
        "--cleanup", action="store_true", help="delete the project on the server afterwards"
    )
    load.set_defaults(func=run_load)


def run_send(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.labelling.annotation_tool import send_for_review

    samples = load_samples(args.dataset, args.view_tag, args.limit)
    if args.queue is not None:
        if args.view_tag or args.limit is not None:
            raise ValueError("--queue sends the queue's masks: give no --view-tag or --limit")
        dataset = samples._root_dataset
        if not dataset.has_saved_view(args.queue):
            raise ValueError(f"dataset {dataset.name!r} has no saved view {args.queue!r}")
        samples = dataset.load_saved_view(args.queue)
    results = send_for_review(
        samples, args.anno_key, args.label_field, classes=args.classes, url=args.url
    )
    print(
        f"sent {len(results.uploaded_tasks)} samples to Label Studio project "
        f"{results.project_id} as annotation run {args.anno_key!r}"
    )
    return 0


def run_load(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.labelling.annotation_tool import load_review

    dataset = load_samples(args.dataset)
    summary = load_review(
        dataset, args.anno_key, args.label_field, url=args.url, cleanup=args.cleanup, progress=True
    )
    print(summary)
    return 1 if summary.failures and not summary.samples_updated else 0


def run_queue(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.labelling.review_queue import review_queue

    dataset = load_samples(args.dataset)
    view = review_queue(
        dataset,
        label_field=args.label_field,
        n=args.n,
        classes=args.classes,
        by=args.by,
        name=args.name,
        overwrite=args.overwrite,
    )
    what = "masks" if args.by == "masks" else "samples"
    print(f"saved view {view.name!r} on dataset {dataset.name!r}: {len(view)} {what}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.labelling.apply_review import apply_review

    samples = load_samples(args.dataset, args.view_tag, args.limit)
    summary = apply_review(samples, args.label_field, progress=True)
    print(summary)
    return 1 if summary.failures and not summary.samples_updated else 0


def run_report(args: argparse.Namespace) -> int:
    from fiftyone_ssa.cli.common import load_samples
    from fiftyone_ssa.evaluation.review_report import review_report

    samples = load_samples(args.dataset, args.view_tag, args.limit)
    report = review_report(
        samples,
        args.label_field,
        gt_field=args.gt,
        ignore_index=args.ignore_index,
        reduce_zero_label=args.reduce_zero_label,
    )
    print(report)
    return 0
