"""``fiftyone-ssa eval``: mIoU of one or more prediction fields against a ground-truth field."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="mIoU of prediction fields against a ground-truth field",
        description=(
            "Evaluates Segmentation fields of a FiftyOne dataset with mmsegmentation's mIoU and "
            "prints mIoU, mAcc, aAcc and per-class IoU side by side, with each field's difference "
            "to the first --pred. Classes are matched by name through the fields' mask targets. "
            "With --eval-key the runs are saved on the dataset: under KEY for one --pred, under "
            "KEY_<field> for each of several, with per-sample <key>_miou and <key>_aacc fields."
        ),
    )
    parser.add_argument("dataset", help="name of the FiftyOne dataset")
    parser.add_argument("--gt", required=True, metavar="FIELD", help="ground-truth field")
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        metavar="FIELD",
        help="prediction field (repeat to compare several; the first is the reference)",
    )
    parser.add_argument(
        "--eval-key",
        default=None,
        metavar="KEY",
        help="save the evaluation runs (KEY, or KEY_<field> for several --pred)",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="ground-truth value whose pixels are excluded (default: 255)",
    )
    parser.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ADE20K raw annotations: ground truth 0 ignored, other values minus one",
    )
    parser.add_argument(
        "--plot", default=None, metavar="FILE", help="write a per-class IoU bar chart (PNG)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from fiftyone_ssa.evaluation.compare import check_plot_path, compare_miou, plot_per_class_iou
    from fiftyone_ssa.evaluation.miou import check_ground_truth_targets
    from fiftyone_ssa.evaluation.report import format_comparison_table
    from fiftyone_ssa.fields import evaluation_keys

    if not fo.dataset_exists(args.dataset):
        raise ValueError(f"no dataset named {args.dataset!r}; `fiftyone datasets list` lists them")
    dataset = fo.load_dataset(args.dataset)
    check_ground_truth_targets(dataset, args.gt, args.pred)
    if args.plot:
        check_plot_path(args.plot)  # before any run is saved
    results = compare_miou(
        dataset,
        args.pred,
        args.gt,
        eval_key=args.eval_key,
        ignore_index=args.ignore_index,
        reduce_zero_label=args.reduce_zero_label,
    )
    print(format_comparison_table(results))
    if args.eval_key is not None:
        for field, key in evaluation_keys(args.eval_key, args.pred).items():
            print(f"saved {field!r} as evaluation {key!r} (per-sample {key}_miou, {key}_aacc)")
    if args.plot:
        print(f"wrote {plot_per_class_iou(results, args.plot)}")
    return 0
