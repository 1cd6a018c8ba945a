"""``fiftyone-ssa review``: fold a person's corrections of a run's masks back in, and report them."""

from __future__ import annotations

import argparse

from fiftyone_ssa.cli.common import add_target_arguments

_FIELD_HELP = (
    "the Detections field the run wrote: SSA's <label_field>_masks, SSA-engine's "
    "<label_field> (default: %(default)s)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review", help="apply a person's corrections of the masks, report what they changed"
    )
    sub = parser.add_subparsers(dest="review_command", metavar="ACTION")

    apply = sub.add_parser(
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
    apply.add_argument("--label-field", default="ssa_masks", help=_FIELD_HELP)
    apply.set_defaults(func=run_apply)

    report = sub.add_parser(
        "report",
        help="what the review changed per class, and mIoU before and after",
        description=(
            "Per class of the run: its masks, how many a person relabelled, deleted, reshaped "
            "or added; the pairs (run's label -> reviewed label); with --gt, mIoU of the run's "
            "Segmentation before and after review on the reviewed samples with ground truth."
        ),
    )
    add_target_arguments(report)
    report.add_argument("--label-field", default="ssa_masks", help=_FIELD_HELP)
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
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


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
