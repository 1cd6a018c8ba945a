"""What a person's review changed in a run's masks, per class, and what it did to mIoU.

Reads what a run and ``apply_review`` record (``fiftyone_ssa.fields``): the run's label of
every mask it wrote (``<detections>.run_labels``), the marks of corrected masks
(``reviewed``, ``label_before_review``), the sample's ``reviewed_at`` and the copy of the map
as the run painted it (``<segmentation>_before_review``). Counts come from the labels, not
the masks (no mask is loaded); mIoU before and after comes from
:func:`~fiftyone_ssa.evaluation.miou.evaluate_miou` on the reviewed samples.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fiftyone_ssa.evaluation.miou import MIoUResults, evaluate_miou
from fiftyone_ssa.evaluation.report import _format_table, format_comparison_table, percent
from fiftyone_ssa.fields import (
    DEFAULT_REVIEW_FIELD,
    LABEL_BEFORE_REVIEW_ATTRIBUTE,
    REVIEWED_AT_ATTRIBUTE,
    REVIEWED_ATTRIBUTE,
    RUN_LABELS_ATTRIBUTE,
    before_review_field,
    check_field_in_view,
    review_fields,
    source_samples,
)

__all__ = ["ClassReview", "ReviewReport", "review_report"]

DELETED = "(deleted)"
ADDED = "(added)"
BEFORE, AFTER = "before review", "after review"


@dataclass
class ClassReview:
    """One class's counts (the run's class for its masks, the new label for added ones).

    Attributes:
        masks: masks the run gave this class (all labelled samples).
        reviewed: of those, masks a person corrected: relabelled, reshaped or deleted.
        relabelled: masks of this class given another label.
        deleted: masks of this class deleted.
        reshaped: masks of this class that kept their label but changed shape (marked by
            ``apply_review``).
        added: masks a person added with this label.
    """

    masks: int = 0
    reviewed: int = 0
    relabelled: int = 0
    deleted: int = 0
    reshaped: int = 0
    added: int = 0


@dataclass
class ReviewReport:
    """What a review changed (see :func:`review_report`).

    Attributes:
        label_field: the run's Detections field.
        segmentation_field: its Segmentation (None: the run wrote none).
        gt_field: the ground truth the mIoU is measured against, or None.
        samples_labelled: samples with masks in ``label_field``.
        samples_reviewed: samples whose review was applied.
        samples_pending: samples with corrections not applied yet.
        classes: class name -> its counts.
        corrections: (run's label, reviewed label) -> masks; :data:`DELETED` and
            :data:`ADDED` stand for the missing side.
        miou_before, miou_after: the run's map before and after review against the ground
            truth, on the reviewed samples that have one (None without).
        samples_evaluated: how many samples those are.
    """

    label_field: str
    segmentation_field: str | None
    gt_field: str | None = None
    samples_labelled: int = 0
    samples_reviewed: int = 0
    samples_pending: int = 0
    classes: dict[str, ClassReview] = field(default_factory=dict)
    corrections: Counter = field(default_factory=Counter)
    miou_before: MIoUResults | None = None
    miou_after: MIoUResults | None = None
    samples_evaluated: int = 0

    def class_rows(self) -> list[dict[str, Any]]:
        """One dict per class with a mask, classes with corrections first."""
        rows = [{"class": name, **vars(counts)} for name, counts in self.classes.items()]
        return sorted(rows, key=lambda r: (-(r["reviewed"] + r["added"]), r["class"]))

    def correction_rows(self) -> list[dict[str, Any]]:
        """One dict per (run's label, reviewed label) pair, most frequent first."""
        return [
            {"ssa_label": a, "reviewed_label": b, "masks": n}
            for (a, b), n in sorted(self.corrections.items(), key=lambda kv: (-kv[1], kv[0]))
        ]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain values (the App operator's result)."""
        result = {
            "label_field": self.label_field,
            "segmentation_field": self.segmentation_field,
            "gt_field": self.gt_field,
            "samples_labelled": self.samples_labelled,
            "samples_reviewed": self.samples_reviewed,
            "samples_pending": self.samples_pending,
            "classes": self.class_rows(),
            "corrections": self.correction_rows(),
            "samples_evaluated": self.samples_evaluated,
            "miou_before": _number(self.miou_before.miou) if self.miou_before else None,
            "miou_after": _number(self.miou_after.miou) if self.miou_after else None,
            "per_class_iou": [],
        }
        if self.miou_before and self.miou_after:
            before, after = self.miou_before.per_class_iou, self.miou_after.per_class_iou
            for name in dict.fromkeys([*before, *after]):
                b, a = _number(before.get(name)), _number(after.get(name))
                if b is not None or a is not None:
                    result["per_class_iou"].append({"class": name, "before": b, "after": a})
        return result

    def __str__(self) -> str:
        painted = f" (Segmentation {self.segmentation_field!r})" if self.segmentation_field else ""
        lines = [
            f"review of {self.label_field!r}{painted}: {self.samples_reviewed} of "
            f"{self.samples_labelled} labelled samples reviewed"
        ]
        if self.samples_pending:
            lines.append(
                f"{self.samples_pending} sample(s) hold corrections not applied yet "
                "(`fiftyone-ssa review apply`)"
            )
        columns = ["masks", "reviewed", "relabelled", "deleted", "reshaped", "added"]
        rows = [[r["class"], *(str(r[c]) for c in columns)] for r in self.class_rows()]
        totals = [sum(r[c] for r in self.class_rows()) for c in columns]
        lines += ["", "per class (the run's class; added masks: their label):"]
        lines += _format_table(["class", *columns], [*rows, [], ["total", *map(str, totals)]])
        lines += ["", "corrections (the run's label -> the reviewed label):"]
        pairs = self.correction_rows()
        if pairs:
            table = [[r["ssa_label"], r["reviewed_label"], str(r["masks"])] for r in pairs]
            lines += _format_table(["run's label", "reviewed label", "masks"], table)
        else:
            lines.append("  none")
        if self.gt_field is not None:
            lines.append("")
            if self.miou_before is None:
                lines.append(f"mIoU: no reviewed sample has ground truth {self.gt_field!r}")
            else:
                lines.append(
                    f"mIoU on the {self.samples_evaluated} reviewed sample(s) with ground truth: "
                    f"{percent(self.miou_before.miou, 2)} before review, "
                    f"{percent(self.miou_after.miou, 2)} after"
                )
                lines.append(
                    format_comparison_table({BEFORE: self.miou_before, AFTER: self.miou_after})
                )
        return "\n".join(lines)


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def review_report(
    samples,
    label_field: str = DEFAULT_REVIEW_FIELD,
    gt_field: str | None = None,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
) -> ReviewReport:
    """What a person's review changed in the masks a run wrote, per class.

    Per class of the run: its masks, how many a person corrected (relabelled, deleted,
    reshaped) and how many masks were added with that label; the pairs (run's label, reviewed
    label) with their counts; with ``gt_field``, the mIoU of the run's Segmentation before
    review (``<segmentation>_before_review``) and after (the Segmentation itself) against the
    ground truth, on the reviewed samples that have it (mmsegmentation's definition,
    :func:`~fiftyone_ssa.evaluation.miou.evaluate_miou`; nothing is saved). Relabels and
    deletions are counted from the labels as they are, applied or not; ``samples_pending``
    counts samples whose corrections ``apply_review`` has not folded in yet: unmarked
    relabelled or added masks, deletions on a sample never applied (a marked mask relabelled
    again after its application is not seen; applying again is always safe).

    Args:
        samples: a FiftyOne dataset or view, or a patches view (its samples are reported).
        label_field: the Detections field SSA (``<field>_masks``) or SSA-engine wrote.
        gt_field: a ground-truth Segmentation field, or None (no mIoU).
        ignore_index: see :func:`~fiftyone_ssa.evaluation.miou.evaluate_miou`.
        reduce_zero_label: see :func:`~fiftyone_ssa.evaluation.miou.evaluate_miou`.

    Raises:
        ValueError: ``label_field`` holds no run's masks, or ``gt_field`` is missing.
    """
    samples = source_samples(samples)
    schema = check_field_in_view(samples, label_field, "review field")
    if f"{label_field}.{RUN_LABELS_ATTRIBUTE}" not in schema:
        raise ValueError(
            f"{label_field!r} holds no masks a run of this version recorded "
            f"({RUN_LABELS_ATTRIBUTE!r}): nothing to report"
        )
    if gt_field is not None:
        check_field_in_view(samples, gt_field, "ground-truth field")
    segmentation, _ = review_fields(samples, label_field)
    report = ReviewReport(label_field, segmentation, gt_field)
    labelled = samples.exists(label_field)
    columns = {
        "run": RUN_LABELS_ATTRIBUTE,
        "at": REVIEWED_AT_ATTRIBUTE,
        "id": "detections.id",
        "label": "detections.label",
        "reviewed": f"detections.{REVIEWED_ATTRIBUTE}",
        "before": f"detections.{LABEL_BEFORE_REVIEW_ATTRIBUTE}",
    }
    paths = {k: f"{label_field}.{v}" for k, v in columns.items()}
    present = {k: p for k, p in paths.items() if k == "id" or p in schema}
    values = dict(zip(present, labelled.values(list(present.values()))))
    n = len(values["id"])
    for k in paths:
        values.setdefault(k, [None] * n)
    for i in range(n):
        _count_sample(report, *(values[k][i] for k in paths))
    if gt_field is not None and segmentation is not None:
        before = before_review_field(segmentation)
        reviewed = labelled.exists(paths["at"]).exists(gt_field).exists(before)
        report.samples_evaluated = reviewed.count() if before in schema else 0
        if report.samples_evaluated:
            options = {"ignore_index": ignore_index, "reduce_zero_label": reduce_zero_label}
            report.miou_before = evaluate_miou(reviewed, before, gt_field, **options)
            report.miou_after = evaluate_miou(reviewed, segmentation, gt_field, **options)
    return report


def _count_sample(report: ReviewReport, run, at, ids, labels, marks, befores) -> None:
    """Adds one sample's masks to the report."""
    run = run or {}
    ids, labels = ids or [], labels or []
    marks, befores = marks or [None] * len(ids), befores or [None] * len(ids)
    report.samples_labelled += 1
    report.samples_reviewed += at is not None

    def counts(name: str) -> ClassReview:
        return report.classes.setdefault(str(name), ClassReview())

    for name in run.values():
        counts(name).masks += 1
    present, unapplied = set(), False
    for det_id, label, mark, before in zip(ids, labels, marks, befores):
        present.add(det_id)
        if det_id not in run:
            counts(label).added += 1
            report.corrections[(ADDED, str(label))] += 1
            unapplied |= mark is not True
        elif label != run[det_id]:
            counts(run[det_id]).relabelled += 1
            counts(run[det_id]).reviewed += 1
            report.corrections[(str(run[det_id]), str(label))] += 1
            unapplied |= mark is not True or before != run[det_id]
        elif mark is True:
            counts(label).reshaped += 1
            counts(label).reviewed += 1
    for det_id, name in run.items():
        if det_id not in present:
            counts(name).deleted += 1
            counts(name).reviewed += 1
            report.corrections[(str(name), DELETED)] += 1
            unapplied |= at is None
    report.samples_pending += unapplied
