"""Feeding samples to the models: batches, background image decoding, per-sample errors.

Shared by SSA (``pipeline.py``) and SSA-engine (``engine.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import fiftyone as fo

from fiftyone_ssa.core.images import read_rgb, read_size


def check_field_in_view(samples, name: str, what: str = "field") -> dict:
    """Raises ValueError (one line) unless the collection shows the field ``name``.

    A field the dataset has but the view hides (``exclude_fields`` / ``select_fields``) is
    reported as such, not as missing.

    Args:
        samples: a FiftyOne dataset or view.
        name: the field's name (embedded fields with dots).
        what: how the message names the field (``"semantic_branch field"``).

    Returns:
        The collection's flat field schema.
    """
    schema = samples.get_field_schema(flat=True)
    if name in schema:
        return schema
    if name in samples._dataset.get_field_schema(flat=True):
        raise ValueError(
            f"{what} {name!r} exists on the dataset but this view excludes it; keep it in "
            "the view (select_fields / exclude_fields) or use the whole dataset"
        )
    raise ValueError(f"{what} {name!r} does not exist on the dataset")


def check_label_field(samples, name: str, label_type: type, role: str) -> None:
    """Raises ValueError (one line) unless ``name`` is a field holding ``label_type`` labels."""
    schema = check_field_in_view(samples, name, f"{role} field")
    doc_type = getattr(schema[name], "document_type", None)
    if doc_type is None or not issubclass(doc_type, label_type):
        got = doc_type.__name__ if doc_type else type(schema[name]).__name__
        raise ValueError(f"{role} field {name!r} holds {got}, expected {label_type.__name__}")


def iter_batches(samples, batch_size: int) -> Iterator[list[fo.Sample]]:
    """The samples of a collection in lists of at most ``batch_size``, one query per list.

    The ids are listed first. A cursor held open while the models run can time out (ten
    minutes without a read), and FiftyOne restarts it by skipping as many samples as were
    read: on a view of the samples still to label, which the run's own writes shrink, that
    would skip samples that are still pending.
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
    ids = samples.values("id")
    for start in range(0, len(ids), batch_size):
        yield list(samples.select(ids[start : start + batch_size], ordered=True))


def prefetch(samples_batches, read: Callable, num_workers: int):
    """Yields (batch, images), decoding the next batch's images in the background."""
    if num_workers <= 0:
        for batch in samples_batches:
            yield batch, [read(s) for s in batch]
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending = None
        for batch in samples_batches:
            futures = [pool.submit(read, s) for s in batch]
            if pending is not None:
                yield pending[0], [f.result() for f in pending[1]]
            pending = (batch, futures)
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]


def safe_reader(needs_image: bool) -> Callable:
    """A reader of a sample's image (or only its size when no model needs the pixels).

    The reader returns the exception instead of raising it, so that the failure is reported
    for that sample alone.
    """

    def read(sample):
        try:
            return read_rgb(sample.filepath) if needs_image else read_size(sample.filepath)
        except Exception as err:  # reported per sample
            return err

    return read


def guard(fn, *args):
    """``fn(*args)``, or the exception it raised (reported per sample)."""
    try:
        return fn(*args)
    except Exception as err:  # reported per sample
        return err
