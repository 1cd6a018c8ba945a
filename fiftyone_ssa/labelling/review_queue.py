"""The review queue: the masks most likely wrong, as a saved view the App lists.

SSA and SSA-engine give every mask a ``review_score`` in [0, 1] (``core.doubt``; higher = more
likely wrong). :func:`review_queue` saves, on the dataset, a view of the N masks with the
highest score (a patches view of the Detections field, one patch per mask) or of the samples
holding them, so a person reviews the doubtful labels first.
"""

from __future__ import annotations

from collections.abc import Sequence

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_ssa.fields import (
    DEFAULT_REVIEW_FIELD,
    DEFAULT_REVIEW_SIZE,
    REVIEW_BY,
    check_label_field,
    review_view_name,
)

__all__ = ["REVIEW_VIEW_DESCRIPTION", "review_queue"]

# Every saved view review_queue writes has a description starting with this: such a view is
# replaced when the queue is built again; another view of the same name is kept (ValueError).
REVIEW_VIEW_DESCRIPTION = "fiftyone-ssa review queue"


def _check_request(samples, label_field, n, classes, by, name) -> list[str] | None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"Expected `n` to be an integer >= 1, but got {n!r}")
    if by not in REVIEW_BY:
        raise ValueError(f"Expected `by` to be one of {', '.join(REVIEW_BY)}, but got {by!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"Expected `name` to be a non-empty string, but got {name!r}")
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"Expected `classes` to be a list of class names, but got {classes!r}")
        classes = list(classes)
        if not classes:
            raise ValueError("Expected at least one class in `classes`, but got an empty list")
    check_label_field(samples, label_field, fo.Detections, "review")
    schema = samples.get_field_schema(flat=True)
    if f"{label_field}.detections.review_score" not in schema:
        raise ValueError(
            f"the masks of {label_field!r} have no review_score; label them with this "
            "version of fiftyone-ssa (apply_ssa / apply_ssa_engine with overwrite=True)"
        )
    return classes


def _doubtful_masks(samples, label_field: str, classes: list[str] | None):
    """The samples with their scored masks only: not yet reviewed, of ``classes`` if given."""
    keep = F("review_score").exists() & (F("reviewed") != True)  # noqa: E712 (a query)
    if classes is not None:
        keep = keep & F("label").is_in(classes)
    return samples.filter_labels(label_field, keep, only_matches=True)


def review_queue(
    samples,
    label_field: str = DEFAULT_REVIEW_FIELD,
    n: int = DEFAULT_REVIEW_SIZE,
    classes: Sequence[str] | None = None,
    by: str = "masks",
    name: str | None = None,
    overwrite: bool = False,
) -> fo.DatasetView:
    """Saves the view of the ``n`` most doubtful masks (or their samples) on the dataset.

    The masks are those of ``label_field`` with a ``review_score`` (written by ``apply_ssa``
    and ``apply_ssa_engine``), not marked ``reviewed``, and, when ``classes`` is given, labelled
    with one of them; the ``n`` with the highest score are kept (ties in the collection's
    order).

    - ``by="masks"``: a patches view of ``label_field``, one patch per mask, sorted by
      ``review_score`` descending; a label edited in a patch is edited on its sample.
    - ``by="samples"``: the samples holding those masks, with all their labels, the sample of
      the most doubtful mask first.

    The queue is a snapshot: FiftyOne keeps a saved patches view's patches as they were when
    it was saved. Build it again (same name) to leave out the masks reviewed since.
    The view is saved on the dataset (``dataset.save_view``) so the App lists it in its view
    bar; building a queue again under the same name replaces it.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: a Detections field SSA or SSA-engine wrote (``ssa_masks``, ``ssa_engine``).
        n: how many masks.
        classes: only masks labelled with one of these classes.
        by: ``"masks"`` or ``"samples"``.
        name: the saved view's name (default: ``review-<label_field>``, with ``-samples``
            for ``by="samples"``).
        overwrite: replace a saved view of that name that is not a review queue.

    Returns:
        The saved view, as ``dataset.load_saved_view(name)`` gives it (``view.name``).

    Raises:
        ValueError: bad arguments, a field without ``review_score``, or a saved view of that
            name that ``review_queue`` did not write (unless ``overwrite``).
    """
    classes = _check_request(samples, label_field, n, classes, by, name)
    dataset = samples._root_dataset
    name = name or review_view_name(label_field, by)
    if dataset.has_saved_view(name) and not overwrite:
        info = dataset.get_saved_view_info(name)
        if not (info.get("description") or "").startswith(REVIEW_VIEW_DESCRIPTION):
            raise ValueError(
                f"the dataset already has a saved view {name!r} that is not a review queue; "
                "choose another name or pass overwrite=True"
            )
    score = F(f"{label_field}.review_score")
    patches = (
        _doubtful_masks(samples, label_field, classes)
        .to_patches(label_field)
        .sort_by(score, reverse=True)
        .limit(n)
    )
    view = patches
    if by == "samples":
        ids = list(dict.fromkeys(patches.values("sample_id")))
        view = samples.select(ids, ordered=True)
    what = f"the {n} masks of {label_field} with the highest review_score"
    if classes is not None:
        what += f" among {', '.join(classes)}"
    if by == "samples":
        what = f"the samples holding {what}"
    dataset.save_view(name, view, description=f"{REVIEW_VIEW_DESCRIPTION}: {what}", overwrite=True)
    return dataset.load_saved_view(name)
