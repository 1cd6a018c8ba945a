"""``fiftyone-ssa import-sa1b`` and ``fiftyone-ssa export-sa1b``: SA-1B files <-> a dataset."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``import-sa1b`` and ``export-sa1b``."""
    imp = subparsers.add_parser(
        "import-sa1b",
        help="import an SA-1B-format directory (sa_<id>.jpg + sa_<id>.json) as a dataset",
        description="Import every image of DIR with its SA-1B masks as Detections of a new, "
        "persistent dataset. Mask PNGs go to --mask-dir (default: FiftyOne's dataset "
        "directory/<dataset>/<label field>).",
    )
    imp.add_argument("dataset_dir", metavar="DIR", help="directory with sa_<id>.jpg/.json files")
    imp.add_argument("--name", required=True, help="name of the dataset to create")
    imp.add_argument(
        "--label-field", default="sa1b", help="new Detections field to write (default: sa1b)"
    )
    imp.add_argument("--mask-dir", default=None, help="directory for the mask PNGs")
    imp.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="decoding threads (default: FiftyOne's recommended number)",
    )
    imp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset (kept as it was if the import fails)",
    )
    imp.set_defaults(func=run_import)

    exp = subparsers.add_parser(
        "export-sa1b",
        help="export a Detections field as SA-1B JSON (or a Segmentation as SSA's RLE files)",
        description="Write one <image stem>.json per sample in SA-1B's schema with class_name "
        "and class_proposals per annotation; a Segmentation field writes the close-set SSA "
        "files <image stem>_semantic.json instead. Samples whose file cannot be made (e.g. an "
        "unreadable image) are skipped with a warning on stderr.",
    )
    exp.add_argument("dataset", metavar="DATASET", help="name of the dataset")
    exp.add_argument("export_dir", metavar="EXPORT_DIR", help="output directory")
    exp.add_argument("--label-field", required=True, help="Detections or Segmentation field")
    exp.add_argument(
        "--masks-field", default=None, help="with a Segmentation: Detections to add as annotations"
    )
    exp.add_argument("--overwrite", action="store_true", help="replace existing JSON files")
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    from fiftyone_ssa.sa1b import import_sa1b

    dataset = import_sa1b(
        args.dataset_dir,
        name=args.name,
        label_field=args.label_field,
        mask_dir=args.mask_dir,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        persistent=True,
    )
    summary = dataset.info["sa1b_import"]
    print(
        f"Imported {summary['num_samples']} images with {summary['num_annotations']} masks "
        f"into dataset {dataset.name!r}, field {args.label_field!r}"
    )
    if summary["num_without_json"]:
        print(f"{summary['num_without_json']} image(s) had no JSON and have no masks")
    for key, message in sorted(summary["errors"].items()):
        print(f"skipped {key}: {message}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from fiftyone_ssa.sa1b import export_sa1b

    if not fo.dataset_exists(args.dataset):
        raise ValueError(f"Expected DATASET to name an existing dataset, but got {args.dataset!r}")
    paths = export_sa1b(
        fo.load_dataset(args.dataset),
        args.export_dir,
        args.label_field,
        overwrite=args.overwrite,
        masks_field=args.masks_field,
    )
    print(f"Wrote {len(paths)} file(s) to {args.export_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatches to the subcommand the parser chose."""
    return run_export(args) if args.command == "export-sa1b" else run_import(args)
