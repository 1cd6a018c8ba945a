"""Folding a person's corrections of a run's masks back into its labels.

A person corrects the Detections field SSA (``<label_field>_masks``) or SSA-engine
(``<label_field>``) wrote, e.g. in the App's annotation mode, which patches the sample (the
server's JSON patch, ``fiftyone/server/routes/sample.py``): relabels a mask, deletes it, adds
one, or reshapes one. :func:`apply_review` then, per sample:

- finds what changed against the labels the run recorded when it wrote the masks
  (``<detections>.run_labels``, ``{detection id: label}``; see
  ``record.record_run_labels``): a mask whose label differs is *relabelled*, a recorded id that
  is gone is *deleted*, a detection the record lacks is *added*, a mask whose pixel count no
  longer equals the ``area`` the run wrote is *reshaped*;
- marks each relabelled, added or reshaped mask ``reviewed=True`` with the run's label in
  ``label_before_review`` (None for an added mask), and leaves every other mask as it is in
  the database, byte for byte;
- repaints the run's Segmentation from the corrected masks with the run's own rule
  (:func:`fiftyone_ssa.core.voting.paint_masks`: masks largest first, equal areas in list
  order, smaller masks on top) on the map the run painted on: SSA's branch map
  ``<label_field>_branch`` (so a deleted mask's pixels get the branch's class, what SSA gives
  pixels no mask covers), SSA-engine's zeros (``<label_field>_seg``; 0 where no mask is);
- keeps the map as the run painted it in ``<segmentation>_before_review`` (first review only),
  for the review report's "before" mIoU, and stamps ``<detections>.reviewed_at``.

Each sample is written in one update. A re-run of the same labelling leaves reviewed samples
alone unless it is asked to discard reviews (``discard_reviews=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fiftyone as fo
import fiftyone.core.odm as foo
import fiftyone.core.sample as fos
import numpy as np
import torch
from bson import ObjectId
from PIL import Image
from pymongo import UpdateOne

from fiftyone_ssa.core.voting import paint_masks, painting_order
from fiftyone_ssa.fields import (
    DEFAULT_REVIEW_FIELD,
    LABEL_BEFORE_REVIEW_ATTRIBUTE,
    REVIEWED_AT_ATTRIBUTE,
    REVIEWED_ATTRIBUTE,
    RUN_LABELS_ATTRIBUTE,
    before_review_field,
    branch_field,
    check_label_field,
    masks_field,
    review_fields,
    source_samples,
)
from fiftyone_ssa.labelling import colors, record
from fiftyone_ssa.labelling.engine import SegmentationTargets
from fiftyone_ssa.labels import class_map_to_numpy, detection_full_mask, segmentation_to_tensor

__all__ = ["ReviewSummary", "SampleChanges", "apply_review", "sample_changes"]

_CPU = torch.device("cpu")


@dataclass
class SampleChanges:
    """What a person changed in one sample's masks, against the labels the run recorded.

    Attributes:
        relabelled: ids of masks whose label differs from the run's.
        added: ids of masks the run did not write.
        reshaped: ids of the run's masks whose pixel count differs from their ``area``.
        deleted: {id: run's label} of the run's masks that are gone.
    """

    relabelled: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    deleted: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.relabelled or self.added or self.reshaped or self.deleted)


@dataclass
class ReviewSummary:
    """What :func:`apply_review` did.

    Attributes:
        label_field: the Detections field reviewed.
        segmentation_field: the Segmentation repainted (None: the run wrote none).
        samples_reviewed: samples whose masks differ from what the run wrote.
        samples_updated: of those, samples this call wrote (the rest were already applied).
        samples_unchanged: labelled samples nobody changed (left untouched).
        relabelled, added, reshaped, deleted: masks in each state on the reviewed samples.
        failures: (filepath, reason) of samples that could not be applied.
    """

    label_field: str
    segmentation_field: str | None
    samples_reviewed: int = 0
    samples_updated: int = 0
    samples_unchanged: int = 0
    relabelled: int = 0
    added: int = 0
    reshaped: int = 0
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.samples_reviewed} reviewed samples in {self.label_field!r} "
            f"({self.relabelled} masks relabelled, {self.added} added, {self.reshaped} "
            f"reshaped, {self.deleted} deleted), {self.samples_updated} updated now; "
            f"{self.samples_unchanged} samples unchanged"
        )
        if self.segmentation_field:
            text += f"; {self.segmentation_field!r} repainted where masks changed"
        for filepath, reason in self.failures[:20]:
            text += f"\n  {filepath}: {reason}"
        if len(self.failures) > 20:
            text += f"\n  ... and {len(self.failures) - 20} more"
        return text


def sample_changes(detections: fo.Detections, full_masks: list | None = None) -> SampleChanges:
    """Compares a run's Detections, as a person left them, with the labels the run recorded.

    Args:
        detections: the Detections label (with ``run_labels``).
        full_masks: per detection, its image-size (H, W) bool mask or None (no mask), to
            find reshaped masks; None skips that check.

    Raises:
        ValueError: the label has no ``run_labels`` (not written by a run of this version).
    """
    recorded = _attribute(detections, RUN_LABELS_ATTRIBUTE)
    if recorded is None:
        raise ValueError(
            f"the masks carry no {RUN_LABELS_ATTRIBUTE!r} (labelled before reviews were "
            "recorded): label them again to review them"
        )
    changes = SampleChanges()
    present = set()
    for i, det in enumerate(detections.detections):
        present.add(det.id)
        if det.id not in recorded:
            changes.added.append(det.id)
        elif det.label != recorded[det.id]:
            changes.relabelled.append(det.id)
        elif full_masks is not None and full_masks[i] is not None and _area(det) is not None:
            if int(full_masks[i].sum()) != _area(det):
                changes.reshaped.append(det.id)
    changes.deleted = {i: label for i, label in recorded.items() if i not in present}
    return changes


def _area(det: fo.Detection) -> int | None:
    value = det.get_field("area") if det.has_field("area") else None
    return int(value) if isinstance(value, (int, np.integer)) else None


@dataclass
class _Target:
    """The fields one review reads and writes."""

    label_field: str
    segmentation: str | None
    base_field: str | None
    ssa: bool
    targets: SegmentationTargets | None

    @property
    def before(self) -> str | None:
        return before_review_field(self.segmentation) if self.segmentation else None


def apply_review(
    samples,
    label_field: str = DEFAULT_REVIEW_FIELD,
    progress: bool | Callable | None = None,
) -> ReviewSummary:
    """Applies a person's corrections of a run's masks: marks them and repaints the map.

    See the module's description for the rules. Samples nobody changed are not written; a
    sample already applied is written again only where something changed since.

    Deleted masks: their pixels get what the run gives pixels no mask covers (SSA: the
    branch's class, so the run must have kept ``<label_field>_branch``; SSA-engine: 0).
    Without the branch map, an SSA sample where masks were deleted or reshaped is refused
    (listed in ``failures``; relabels and additions still work: they are painted over the
    map as the run painted it). Detections without a mask (boxes) are marked but not painted.
    A label that names no class of the Segmentation's mask targets becomes a new class (the
    next free id), added to the mask targets.

    Args:
        samples: a FiftyOne dataset or view, or a patches view of ``label_field`` (e.g. the
            review queue): the samples it shows are reviewed.
        label_field: the Detections field SSA (``<field>_masks``) or SSA-engine wrote.
        progress: FiftyOne's progress argument.

    Returns:
        A :class:`ReviewSummary`.

    Raises:
        ValueError: ``label_field`` is not a Detections field, or a frames/clips view.
    """
    samples = source_samples(samples)
    check_label_field(samples, label_field, fo.Detections, "review")
    dataset = samples._dataset
    segmentation, base_field = review_fields(samples, label_field)
    target = _Target(
        label_field,
        segmentation,
        base_field,
        ssa=segmentation is not None and label_field == masks_field(segmentation),
        targets=SegmentationTargets(dataset, segmentation) if segmentation else None,
    )
    _declare_review_fields(dataset, target)
    summary = ReviewSummary(label_field, segmentation)
    read = [label_field] + [f for f in (segmentation, base_field, target.before) if f]
    view = samples.exists(label_field).select_fields(read)
    ops, ids = [], []
    for sample in view.iter_samples(progress=progress):
        try:
            update = _review_sample(sample, target)
        except (ValueError, OSError) as err:
            summary.failures.append((sample.filepath, str(err)))
            continue
        if update is None:
            summary.samples_unchanged += 1
            continue
        changes, document, filters = update
        summary.samples_reviewed += 1
        summary.relabelled += len(changes.relabelled)
        summary.added += len(changes.added)
        summary.reshaped += len(changes.reshaped)
        summary.deleted += len(changes.deleted)
        if document:
            ops.append(
                UpdateOne({"_id": sample._id}, {"$set": document}, array_filters=filters or None)
            )
            ids.append(sample.id)
            summary.samples_updated += 1
        if len(ops) >= 64:
            _write(dataset, ops, ids)
    _write(dataset, ops, ids)
    if summary.samples_updated:
        _finish(dataset, target)
    return summary


def _declare_review_fields(dataset: fo.Dataset, target: _Target) -> None:
    """Declares the review's attributes (filterable in the App) and the before-review copy."""
    lf = target.label_field
    schema = {
        f"{lf}.{REVIEWED_AT_ATTRIBUTE}": (fo.DateTimeField, {}),
        f"{lf}.detections.{REVIEWED_ATTRIBUTE}": (fo.BooleanField, {}),
        f"{lf}.detections.{LABEL_BEFORE_REVIEW_ATTRIBUTE}": (fo.StringField, {}),
    }
    if target.before:
        schema[target.before] = (
            fo.EmbeddedDocumentField,
            {"embedded_doc_type": fo.Segmentation},
        )
    record.declare_output_fields(dataset, schema)


def _review_sample(sample, target: _Target):
    """One sample's update: None when nobody changed it, else (its changes, the ``$set``
    document, its array filters; the document is empty when all was applied before)."""
    lf = target.label_field
    detections = sample[lf]
    painted = sample[target.segmentation] if target.segmentation else None
    height, width = _image_size(sample, painted)
    full = [
        detection_full_mask(d, width, height) if d.mask is not None or d.mask_path else None
        for d in detections.detections
    ]
    changes = sample_changes(detections, full)
    if not changes:
        return None
    recorded = detections[RUN_LABELS_ATTRIBUTE]
    corrected = set(changes.relabelled) | set(changes.reshaped) | set(changes.added)
    document, filters = {}, []
    for k, det in enumerate(detections.detections):
        if det.id not in corrected:
            continue
        before = recorded.get(det.id)
        if _attribute(det, REVIEWED_ATTRIBUTE) is True and (
            _attribute(det, LABEL_BEFORE_REVIEW_ATTRIBUTE) == before
        ):
            continue  # marked by an earlier application: left as it is
        path = f"{lf}.detections.$[d{k}]"
        document[f"{path}.{REVIEWED_ATTRIBUTE}"] = True
        document[f"{path}.{LABEL_BEFORE_REVIEW_ATTRIBUTE}"] = before
        filters.append({f"d{k}._id": ObjectId(det.id)})
    applied_before = _attribute(detections, REVIEWED_AT_ATTRIBUTE) is not None
    if painted is not None:
        current = np.asarray(painted.get_mask())
        repainted = _repaint(sample, target, detections, full, changes, current)
        if repainted.dtype != current.dtype or not np.array_equal(repainted, current):
            document[f"{target.segmentation}.mask"] = _mask_to_mongo(repainted)
            if painted.mask_path is not None:
                document[f"{target.segmentation}.mask_path"] = None
        if sample[target.before] is None:
            kept = fo.Segmentation(mask=current)
            document[target.before] = sample._dataset.get_field(target.before).to_mongo(kept)
    if document or not applied_before:
        now = datetime.now(timezone.utc)
        document[f"{lf}.{REVIEWED_AT_ATTRIBUTE}"] = now
        document["last_modified_at"] = now
    return changes, document, filters


def _attribute(label, name: str):
    return label.get_field(name) if label.has_field(name) else None


def _image_size(sample, painted: fo.Segmentation | None) -> tuple[int, int]:
    """(H, W): the Segmentation's, else the image file's."""
    mask = painted.get_mask() if painted is not None else None
    if mask is not None:
        return tuple(np.asarray(mask).shape[:2])
    with Image.open(sample.filepath) as image:
        width, height = image.size
    return height, width


def _base_map(sample, target: _Target, changes: SampleChanges, current: np.ndarray):
    """(H, W) int64: the map the run painted its masks on."""
    if not target.ssa:
        return torch.zeros(current.shape[:2], dtype=torch.int64)
    if target.base_field is not None and sample[target.base_field] is not None:
        return segmentation_to_tensor(sample[target.base_field], _CPU)
    if changes.deleted or changes.reshaped:
        raise ValueError(
            "masks were deleted or reshaped but the run kept no branch map to repaint their "
            f"pixels from ({branch_field(target.segmentation)!r}; label with write_branch=True)"
        )
    # Relabels and additions only: painted over the map as the run painted it.
    kept = sample[target.before]
    kept = np.asarray(kept.get_mask()) if kept is not None else current
    return torch.from_numpy(kept.astype(np.int64))


def _repaint(sample, target, detections, full, changes, current) -> np.ndarray:
    """The map painted from the corrected masks with the run's rule, as FiftyOne stores it."""
    base = _base_map(sample, target, changes, current)
    if tuple(base.shape) != tuple(current.shape[:2]):
        raise ValueError(
            f"the base map is {base.shape[1]}x{base.shape[0]} but the Segmentation is "
            f"{current.shape[1]}x{current.shape[0]}"
        )
    painted = [(m, det.label) for m, det in zip(full, detections.detections) if m is not None]
    if not painted:
        return class_map_to_numpy(base)
    masks = torch.from_numpy(np.stack([m for m, _ in painted]))
    ids = torch.tensor([_class_id(target.targets, name) for _, name in painted])
    return class_map_to_numpy(
        paint_masks(base, masks, ids, painting_order(masks.flatten(1).sum(dim=1)))
    )


def _class_id(targets: SegmentationTargets, name: str | None) -> int:
    """The id of a class name in the Segmentation's mask targets; a name the targets lack is
    the id it spells when the run named an unnamed id so (``"7"``), else a new id."""
    name = "" if name is None else str(name)
    if name in targets.ids:
        return targets.ids[name]
    if name.isdigit() and int(name) not in targets.ids.values():
        return int(name)
    return targets.id_of(name)


def _mask_to_mongo(mask: np.ndarray):
    return fo.Segmentation._fields["mask"].to_mongo(mask)


def _write(dataset: fo.Dataset, ops: list, ids: list) -> None:
    """Writes the queued sample updates (one per sample) and empties the queues."""
    if ops:
        foo.bulk_write(ops, dataset._sample_collection)
        fos.Sample._reload_docs(dataset._sample_collection_name, sample_ids=ids)
    ops.clear()
    ids.clear()


def _finish(dataset: fo.Dataset, target: _Target) -> None:
    """New class names into the mask targets; the copy reads the same names; App colours."""
    fields = {target.label_field: fo.Detections}
    if target.segmentation:
        target.targets.save()
        dataset.reload()
        names = dataset.mask_targets.get(target.segmentation)
        if names:
            dataset.mask_targets[target.before] = dict(names)
            dataset.save()
        fields.update({target.segmentation: fo.Segmentation, target.before: fo.Segmentation})
    colors.set_output_colors(dataset, fields)
