"""Reviews: the ``apply_review`` and ``review_report`` operators.

A person corrects a run's masks in the App (the modal's annotation mode, on the samples or on
a patches view of the masks such as the review queue); ``apply_review`` folds the corrections
back (marks, repainted Segmentation) and ``review_report`` shows what they changed.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types

from .evaluate import default_ground_truth
from .forms import (
    SSAOperator,
    block,
    dropdown,
    label_fields,
    require_dataset,
    target_input,
    target_samples,
)
from .library import ProgressReporter, import_library

DEFAULT_REVIEW_FIELD = import_library("fiftyone_ssa.fields").DEFAULT_REVIEW_FIELD
# The report's tables: key -> (heading, kind).
CLASS_COLUMNS = {
    "class": ("Class", "str"),
    "masks": ("Masks", "int"),
    "reviewed": ("Corrected", "int"),
    "relabelled": ("Relabelled", "int"),
    "deleted": ("Deleted", "int"),
    "reshaped": ("Reshaped", "int"),
    "added": ("Added", "int"),
}
CORRECTION_COLUMNS = {
    "ssa_label": ("Run's label", "str"),
    "reviewed_label": ("Reviewed label", "str"),
    "masks": ("Masks", "int"),
}
IOU_COLUMNS = {
    "class": ("Class", "str"),
    "before": ("IoU before review", "float"),
    "after": ("IoU after review", "float"),
}


def reviewable_fields(dataset) -> list[str]:
    """The Detections fields whose masks a fiftyone-ssa run recorded (``run_labels``)."""
    names = import_library("fiftyone_ssa.fields")
    schema = dataset.get_field_schema(flat=True)
    return [
        f
        for f in label_fields(dataset, fo.Detections)
        if f"{f}.{names.RUN_LABELS_ATTRIBUTE}" in schema
    ]


def review_field_input(inputs, ctx) -> str | None:
    """The reviewed Detections field; None (and a message) when the dataset has none."""
    fields = reviewable_fields(ctx.dataset)
    if not fields:
        block(
            inputs,
            "field_error",
            "No Detections field here holds masks a fiftyone-ssa run labelled: run SSA or "
            "SSA-engine first",
        )
        return None
    default = DEFAULT_REVIEW_FIELD if DEFAULT_REVIEW_FIELD in fields else fields[0]
    dropdown(
        inputs,
        "label_field",
        fields,
        "Masks field",
        description="the Detections field the run wrote and a person corrected",
        default=default,
    )
    field = ctx.params.get("label_field") or default
    if field not in fields:
        block(inputs, "field_error", f"{field!r} holds no masks a fiftyone-ssa run labelled")
        return None
    return field


def _table(outputs, name: str, label: str, columns: dict) -> None:
    row = types.Object()
    table = types.TableView()
    for key, (heading, kind) in columns.items():
        getattr(row, kind)(key, label=heading)
        table.add_column(key, label=heading)
    outputs.list(name, row, label=label, view=table)


class ApplyReview(SSAOperator):
    """Marks the masks a person corrected and repaints the run's Segmentation from them."""

    default_delegated = False

    @property
    def config(self):
        return self._config(
            "apply_review",
            "Apply review",
            "Fold corrected masks (relabelled, deleted, added) back into the Segmentation",
        )

    def __call__(self, sample_collection, label_field: str = DEFAULT_REVIEW_FIELD, delegate=False):
        """Applies the review through the operator; ``result.result`` holds the counts."""
        return self._call(sample_collection, {"label_field": label_field}, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            review_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Apply review"))

    def execute(self, ctx):
        review = import_library("fiftyone_ssa.labelling.apply_review")
        field = ctx.params.get("label_field") or DEFAULT_REVIEW_FIELD
        reporter = ProgressReporter(ctx)
        summary = review.apply_review(
            target_samples(ctx), field, progress=reporter.fiftyone_progress()
        )
        self._finish(ctx, colors=True)
        return {
            "label_field": summary.label_field,
            "segmentation_field": summary.segmentation_field,
            "samples_reviewed": summary.samples_reviewed,
            "samples_updated": summary.samples_updated,
            "samples_unchanged": summary.samples_unchanged,
            "relabelled": summary.relabelled,
            "deleted": summary.deleted,
            "added": summary.added,
            "reshaped": summary.reshaped,
            "failures": [f"{path}: {reason}" for path, reason in summary.failures[:20]],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("label_field", label="Masks field")
        outputs.str("segmentation_field", label="Segmentation repainted")
        outputs.int("samples_reviewed", label="Reviewed samples")
        outputs.int("samples_updated", label="Samples updated now")
        outputs.int("samples_unchanged", label="Samples nobody changed")
        outputs.int("relabelled", label="Masks relabelled")
        outputs.int("deleted", label="Masks deleted")
        outputs.int("added", label="Masks added")
        outputs.int("reshaped", label="Masks reshaped")
        if (ctx.results or {}).get("failures"):
            outputs.list("failures", types.String(), label="Samples not applied")
        return types.Property(outputs, view=types.View(label="Review applied"))


class ReviewReport(SSAOperator):
    """What a review changed per class, and mIoU before and after where ground truth exists."""

    default_delegated = False

    @property
    def config(self):
        return self._config(
            "review_report",
            "Review report",
            "Masks relabelled, deleted and added per class; mIoU before and after review",
        )

    def __call__(
        self,
        sample_collection,
        label_field: str = DEFAULT_REVIEW_FIELD,
        gt_field: str | None = None,
        delegate: bool = False,
    ):
        """Builds the report through the operator; ``result.result`` holds it."""
        params = {"label_field": label_field, "gt_field": gt_field or ""}
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            review_field_input(inputs, ctx)
            fields = label_fields(ctx.dataset, fo.Segmentation)
            dropdown(
                inputs,
                "gt_field",
                ["", *fields],
                "Ground truth",
                description="a Segmentation field: mIoU before and after review (optional)",
                default=default_ground_truth(ctx.dataset, fields) or "",
                required=False,
            )
        return types.Property(inputs, view=types.View(label="Review report"))

    def execute(self, ctx):
        report = import_library("fiftyone_ssa.evaluation.review_report")
        field = ctx.params.get("label_field") or DEFAULT_REVIEW_FIELD
        gt_field = ctx.params.get("gt_field")
        if gt_field is None:
            fields = label_fields(ctx.dataset, fo.Segmentation)
            gt_field = default_ground_truth(ctx.dataset, fields)
        result = report.review_report(target_samples(ctx), field, gt_field=gt_field or None)
        return {**result.to_dict(), "text": str(result)}

    def resolve_output(self, ctx):
        results = ctx.results or {}
        outputs = types.Object()
        outputs.str("label_field", label="Masks field")
        outputs.int("samples_labelled", label="Labelled samples")
        outputs.int("samples_reviewed", label="Reviewed samples")
        outputs.int("samples_pending", label="Samples with corrections not applied yet")
        _table(outputs, "classes", "Per class", CLASS_COLUMNS)
        _table(outputs, "corrections", "Run's label -> reviewed label", CORRECTION_COLUMNS)
        if results.get("miou_before") is not None:
            outputs.int("samples_evaluated", label="Reviewed samples with ground truth")
            outputs.float("miou_before", label="mIoU before review")
            outputs.float("miou_after", label="mIoU after review")
            _table(outputs, "per_class_iou", "IoU per class", IOU_COLUMNS)
        return types.Property(outputs, view=types.View(label="Review report"))
