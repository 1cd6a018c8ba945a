"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable

from fiftyone_ssa.fields import DEFAULT_RAY_BLOCK_SIZE


def load_samples(dataset_name: str, view_tag: list[str] | None = None, limit: int | None = None):
    """The dataset (or its tagged subset) named on the command line."""
    import fiftyone as fo

    if limit is not None and limit < 1:
        raise ValueError(f"Expected --limit to be >= 1, but got {limit}")
    with _one_local_rank_at_a_time():
        # The first query starts FiftyOne's database service when none runs; torchrun's ranks
        # starting it at once make all but one fail, so they take turns on each machine.
        exists = fo.dataset_exists(dataset_name)
    if not exists:
        raise ValueError(f"no dataset named {dataset_name!r}; `fiftyone datasets list` lists them")
    samples = fo.load_dataset(dataset_name)
    if view_tag:
        samples = samples.match_tags(view_tag)
    if limit is not None:
        samples = samples.limit(limit)
    return samples


@contextlib.contextmanager
def _one_local_rank_at_a_time():
    """Under torchrun (several local ranks), an exclusive lock shared by this machine's ranks."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1:
        yield
        return
    import fcntl

    path = os.path.join(tempfile.gettempdir(), f"fiftyone-ssa-{os.getuid()}-database.lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """DATASET plus the options selecting which of its samples to process."""
    parser.add_argument("dataset", help="name of a FiftyOne dataset")
    parser.add_argument(
        "--view-tag", action="append", help="only samples with this tag (repeat: any of them)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples")


def add_run_arguments(
    parser: argparse.ArgumentParser, default_field: str, batch_help: str = "images per batch"
) -> None:
    """Options every labelling run shares."""
    parser.add_argument(
        "--label-field", default=default_field, help="output field (default: %(default)s)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help=f"{batch_help} (default: %(default)s)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="image decoding threads (0: decode in turn; default: %(default)s)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace labels a run with other settings wrote in the output fields",
    )
    group.add_argument(
        "--skip-existing",
        action="store_true",
        help="label only samples whose output field is empty",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="label again the samples an identical earlier run (same run key) already labelled",
    )
    parser.add_argument(
        "--discard-reviews",
        action="store_true",
        help="relabel samples whose masks a person reviewed (`fiftyone-ssa review apply`), "
        "losing the corrections; without it they are kept, also with --overwrite",
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failing sample instead of recording it",
    )
    ray = parser.add_argument_group(
        "Ray", 'label on a Ray cluster (needs pip install "fiftyone-ssa[ray]")'
    )
    ray.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: this process (or this torchrun rank); ray: Ray actors labelling blocks "
        "of samples handed out as they become free (default: %(default)s)",
    )
    ray.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="the Ray cluster: auto (the one `ray start` made on this machine) or HOST:PORT "
        "(default: Ray started on this machine for this run)",
    )
    ray.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="Ray actors (default: one per --gpus-per-worker GPUs; one per CPU without GPUs)",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="N",
        help="GPUs per Ray actor, fractions allowed (default: 1 with GPUs, else 0)",
    )
    ray.add_argument(
        "--ray-block-size",
        type=int,
        default=DEFAULT_RAY_BLOCK_SIZE,
        metavar="N",
        help="samples per block handed to a Ray actor (default: %(default)s)",
    )


def backend_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``apply_ssa``/``apply_ssa_engine`` for the backend options."""
    return {
        "backend": args.backend,
        "ray_address": args.ray_address,
        "ray_workers": args.ray_workers,
        "gpus_per_worker": args.gpus_per_worker,
        "ray_block_size": args.ray_block_size,
    }


def names_in_file(path: str | os.PathLike) -> list[str]:
    """The names in a UTF-8 text file, one per line; ``#`` starts a comment, blank lines are
    skipped, a byte-order mark (as Windows editors write) is dropped.

    Raises:
        OSError: the file cannot be read.
    """
    names = []
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle.read().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    return names


def add_class_arguments(parser: argparse.ArgumentParser) -> None:
    """The class list of an open-vocabulary semantic branch (CLIPSeg, SAM 3): one of three."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names for an open-vocabulary branch (CLIPSeg, SAM 3), separated by spaces "
        "or commas: --classes cat dog or --classes 'traffic light,car'",
    )
    group.add_argument(
        "--classes-file",
        metavar="FILE",
        help="a UTF-8 text file of class names, one per line (# starts a comment)",
    )
    group.add_argument(
        "--classes-from-field",
        metavar="FIELD",
        help="the mask targets of a Segmentation field as SAM 3's classes (ids kept; id 0 is "
        "the background)",
    )


def read_classes(args: argparse.Namespace, samples=None) -> list[str] | dict[int, str] | None:
    """The class list given by ``--classes``, ``--classes-file`` or ``--classes-from-field``
    (None when none is).

    Raises:
        ValueError: an unreadable or empty file, or a field without mask targets.
    """
    if args.classes:
        names = [n.strip() for arg in args.classes for n in arg.split(",")]
        return [n for n in names if n]
    if args.classes_file:
        try:
            names = names_in_file(args.classes_file)
        except OSError as err:
            raise ValueError(f"cannot read --classes-file {args.classes_file}: {err}") from None
        if not names:
            raise ValueError(f"--classes-file {args.classes_file} holds no class name")
        return names
    if args.classes_from_field:
        from fiftyone_ssa.labelling.sources import field_classes

        classes = field_classes(samples, args.classes_from_field)
        if not classes:
            raise ValueError(
                f"field {args.classes_from_field!r} has no mask targets: give the classes with "
                "--classes or --classes-file"
            )
        return classes
    return None


def parse_mask_options(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` mask generator options, values as int or float."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"Expected a mask option as KEY=VALUE, but got {pair!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(
                f"Expected a number for mask option {key!r}, but got {value!r}"
            ) from None
        options[key.replace("-", "_")] = (
            int(number) if number.is_integer() and "." not in value else number
        )
    return options


def run_on_ranks(label: Callable[[], object]) -> int:
    """Runs ``label()`` on this process's rank (joining torchrun's group when launched by it).

    Rank 0 prints the merged summary; the exit code is 1 when nothing could be labelled.
    """
    from fiftyone_ssa.labelling import distributed

    ranks = distributed.init_from_environment()
    try:
        summary = label()
    finally:
        distributed.shutdown()
    if ranks.is_main:
        print(summary)
    return 1 if summary.failures and not summary.num_labelled else 0
