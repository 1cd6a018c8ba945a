"""Reviewing a run's masks in an annotation tool (Label Studio) through FiftyOne's annotation API.

:func:`send_for_review` sends masks (the review queue, or any view) with FiftyOne's
``annotate`` to an annotation server: each sample becomes a task, each mask a region (Label
Studio: a brush region, FiftyOne's ``label_type="instances"``) whose id is the detection's id,
and the class choices are the masks' labels and their ``class_proposals``.
:func:`load_review` loads what the person saved with ``load_annotations`` and folds it in
with :func:`~fiftyone_ssa.labelling.apply_review.apply_review` (marks, map repainted).

What round-trips with FiftyOne 1.22's Label Studio backend (``fiftyone/utils/labelstudio.py``):

- a *relabel*: the region keeps its id, FiftyOne merges the new label into the detection of
  that id (``_merge_label``), the mask and box are not touched;
- a *deletion*: a sent id the saved annotation lacks is deleted from the field
  (``delete_labels``); the run's record keeps it, so ``apply_review`` repaints its pixels;
- masks not sent (outside the queue) and masks left as they were keep their stored values.

Spatial edits are not loaded (``allow_spatial_edits=False``): the backend turns a brush
region back into a new crop of the mask (``Segmentation.to_detections``), so a mask nobody
touched would come back re-encoded. Reshape masks in the App instead. Regions a person adds
in Label Studio come back as new detections (marked added by ``apply_review``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import fiftyone as fo
import requests

from fiftyone_ssa.fields import DEFAULT_REVIEW_FIELD, check_label_field, source_samples
from fiftyone_ssa.labelling.apply_review import ReviewSummary, apply_review

__all__ = ["load_review", "review_classes", "send_for_review"]

_BACKENDS = ("labelstudio",)
_PROPOSALS = "class_proposals"


def _check_anno_key(anno_key) -> None:
    if not isinstance(anno_key, str) or not anno_key.isidentifier():
        raise ValueError(
            f"Expected `anno_key` to be a valid Python identifier, but got {anno_key!r}"
        )


def _check_access(backend: str, url: str | None, api_key: str | None) -> None:
    """Raises ValueError (one line, the server's reason) when the server refuses the key.

    FiftyOne's backend reports a refused key as a bare "401 Unauthorized" on its first
    listing; Label Studio says why (e.g. legacy tokens turned off in the organization).
    """
    defaults = fo.annotation_config.backends.get(backend, {})
    url, api_key = url or defaults.get("url"), api_key or defaults.get("api_key")
    if not url or not api_key:
        return  # FiftyOne asks for what is missing
    try:
        answer = requests.get(
            url.rstrip("/") + "/api/current-user/whoami",
            headers={"Authorization": f"Token {api_key}"},
            timeout=30,
        )
    except requests.RequestException as err:
        raise ValueError(f"cannot reach Label Studio at {url}: {err}") from None
    if answer.status_code in (401, 403):
        try:
            reason = answer.json().get("detail") or answer.reason
        except ValueError:
            reason = answer.reason
        hint = ""
        if "legacy" in str(reason).lower():
            hint = " (run scripts/label_studio_legacy_tokens.py, or Organization -> API Tokens Settings)"
        raise ValueError(f"Label Studio at {url} refused the API key: {reason}{hint}")


def _masks_to_send(samples, label_field: str):
    """The samples holding the masks to send, showing only those masks.

    A patches view (the review queue) sends the masks it shows; a dataset or view sends all
    masks of ``label_field`` on its samples.
    """
    if samples._is_patches:
        ids = samples.values(f"{label_field}.id")
        holding = source_samples(samples)
        return holding.select_labels(ids=ids, fields=label_field)
    return source_samples(samples).exists(label_field)


def review_classes(samples, label_field: str, extra: Sequence[str] = ()) -> list[str]:
    """The class choices for a review: the masks' labels, their proposals and ``extra``.

    Args:
        samples: the samples (with only the masks to review) of :func:`_masks_to_send`.
        label_field: the Detections field.
        extra: more class names to offer.

    Returns:
        Sorted, distinct class names.
    """
    names = set(samples.distinct(f"{label_field}.detections.label"))
    schema = samples.get_field_schema(flat=True)
    if f"{label_field}.detections.{_PROPOSALS}" in schema:
        names.update(samples.distinct(f"{label_field}.detections.{_PROPOSALS}"))
    names.update(extra)
    return sorted(n for n in names if n)


def send_for_review(
    samples,
    anno_key: str,
    label_field: str = DEFAULT_REVIEW_FIELD,
    backend: str = "labelstudio",
    classes: Sequence[str] = (),
    url: str | None = None,
    api_key: str | None = None,
    project_name: str | None = None,
    launch_editor: bool = False,
):
    """Sends masks to an annotation server for a person to relabel or delete.

    Calls ``view.annotate(anno_key, backend=..., label_field=label_field,
    label_type="instances", classes=..., allow_spatial_edits=False)`` on the samples holding
    the masks: one task per sample, one region per mask, with the masks' labels and
    ``class_proposals`` (and ``classes``) as the choices.

    Args:
        samples: the review queue (a patches view of ``label_field``: only its masks are
            sent), or a dataset or view (all masks of ``label_field`` on its samples).
        anno_key: the annotation run's key (a Python identifier), for :func:`load_review`.
        label_field: the Detections field SSA (``<field>_masks``) or SSA-engine wrote.
        backend: the FiftyOne annotation backend; ``"labelstudio"``.
        classes: more class names to offer besides the masks' labels and proposals.
        url: the server's URL (default: FiftyOne's annotation config,
            ``FIFTYONE_LABELSTUDIO_URL``).
        api_key: the server's API key (default: ``FIFTYONE_LABELSTUDIO_API_KEY``). Label
            Studio's legacy token: FiftyOne 1.22's backend authenticates with
            ``Authorization: Token``.
        project_name: the Label Studio project's name (default: FiftyOne's).
        launch_editor: open the project in a browser.

    Returns:
        FiftyOne's annotation results (``results.project_id``, ``results.uploaded_tasks``).

    Raises:
        ValueError: bad arguments, no masks to send, an ``anno_key`` already used, or the
            server refuses the API key (its reason).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {', '.join(_BACKENDS)}, got {backend!r}")
    _check_anno_key(anno_key)
    if isinstance(classes, str):
        raise ValueError(f"Expected `classes` to be a list of class names, but got {classes!r}")
    check_label_field(source_samples(samples), label_field, fo.Detections, "review")
    if anno_key in samples._root_dataset.list_annotation_runs():
        raise ValueError(f"the dataset already has an annotation run {anno_key!r}")
    view = _masks_to_send(samples, label_field)
    if view.count(f"{label_field}.detections") == 0:
        raise ValueError(f"no masks of {label_field!r} to send")
    _check_access(backend, url, api_key)
    options = {"url": url, "api_key": api_key, "project_name": project_name}
    return view.annotate(
        anno_key,
        backend=backend,
        label_field=label_field,
        label_type="instances",
        classes=review_classes(view, label_field, classes),
        allow_spatial_edits=False,
        launch_editor=launch_editor,
        **{k: v for k, v in options.items() if v is not None},
    )


def load_review(
    dataset: fo.Dataset,
    anno_key: str,
    label_field: str = DEFAULT_REVIEW_FIELD,
    url: str | None = None,
    api_key: str | None = None,
    cleanup: bool = False,
    progress: bool | Callable | None = None,
) -> ReviewSummary:
    """Loads a person's edits from the annotation server and applies them.

    ``dataset.load_annotations(anno_key)`` merges the saved labels into ``label_field`` by
    detection id (relabels) and deletes the sent masks the person removed; then
    :func:`~fiftyone_ssa.labelling.apply_review.apply_review` on the samples sent marks the
    corrected masks and repaints the run's Segmentation. A task nobody saved keeps its masks.

    Args:
        dataset: the dataset the masks were sent from.
        anno_key: the key given to :func:`send_for_review`.
        label_field: the Detections field sent.
        url: the server's URL (default: the one the run was sent to).
        api_key: the server's API key (default: ``FIFTYONE_LABELSTUDIO_API_KEY``).
        cleanup: delete the project on the server afterwards.
        progress: FiftyOne's progress argument.

    Returns:
        :func:`apply_review`'s :class:`~fiftyone_ssa.labelling.apply_review.ReviewSummary`.

    Raises:
        ValueError: no annotation run ``anno_key`` on the dataset, or the server refuses the
            API key (its reason).
    """
    _check_anno_key(anno_key)
    if anno_key not in dataset.list_annotation_runs():
        raise ValueError(f"the dataset has no annotation run {anno_key!r}")
    run = dataset.get_annotation_info(anno_key).config
    _check_access(run.name, url or run.url, api_key)
    options = {k: v for k, v in {"url": url, "api_key": api_key}.items() if v is not None}
    sample_ids = dataset.load_annotation_view(anno_key).values("id")
    dataset.load_annotations(
        anno_key, unexpected="ignore", cleanup=cleanup, progress=progress, **options
    )
    return apply_review(dataset.select(sample_ids), label_field, progress=progress)
