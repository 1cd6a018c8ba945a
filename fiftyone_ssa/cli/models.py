"""``fiftyone-ssa models list|download``: what each preset needs, and fetching it."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list or download model weights")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    listing = sub.add_parser("list", help="presets, what they need, and whether it is present")
    listing.set_defaults(func=run_list)
    download = sub.add_parser("download", help="fetch weights into the models directory")
    download.add_argument(
        "names",
        nargs="*",
        help="presets or Hugging Face ids (default: SSA's defaults, sam-vit-h and "
        "segformer-b5-ade20k)",
    )
    download.set_defaults(func=run_download)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_list(args: argparse.Namespace) -> int:
    from fiftyone_ssa.models import weights

    print(f"models directory: {weights.get_models_dir()}")
    rows = [("preset", "task", "present", "source", "description")]
    for preset in weights.PRESETS.values():
        rows.append(
            (
                preset.name,
                preset.task,
                _presence(preset.name),
                preset.source,
                preset.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _presence(name: str) -> str:
    """``yes``; ``no`` (nothing there); ``no: lacks <files>`` for a partly filled directory."""
    from fiftyone_ssa.models import weights

    missing = weights.missing_preset_files(name)
    if not missing:
        return "yes"
    if not weights.local_dir(name).exists():
        return "no"
    return f"no: lacks {', '.join(missing)}"


def run_download(args: argparse.Namespace) -> int:
    from fiftyone_ssa.fields import DEFAULT_MASK_BRANCH, DEFAULT_SEMANTIC_BRANCH
    from fiftyone_ssa.models import weights

    names = args.names or [DEFAULT_MASK_BRANCH, DEFAULT_SEMANTIC_BRANCH]
    for name in names:
        if name not in weights.PRESETS and not weights.looks_like_hf_id(name):
            raise ValueError(f"unknown model {name!r}: `fiftyone-ssa models list` lists presets")
    for name in names:
        path = weights.download(name)
        print(f"{name}: {path}")
    return 0
