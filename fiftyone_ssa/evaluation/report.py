"""Text reports of mIoU evaluations: one evaluation's per-class table, several side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fiftyone_ssa.evaluation.miou import MIoUResults

__all__ = ["class_union", "format_comparison_table", "format_report", "percent"]


def percent(value: float, digits: int) -> str:
    """``value`` (a fraction) in percent with ``digits`` decimals; ``nan`` stays ``nan``."""
    return "nan" if math.isnan(value) else f"{100 * value:.{digits}f}"


def _delta(value: float, reference: float, digits: int) -> str:
    if math.isnan(value) or math.isnan(reference):
        return "nan"
    return f"{100 * (value - reference):+.{digits}f}"


def _format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others; a row ``[]`` is a rule."""
    widths = [max(len(r[i]) for r in [header, *rows] if r) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    rule = "-" * len(line(header))
    return [line(header), rule] + [line(r) if r else rule for r in rows]


def _notes(field: str, results: MIoUResults) -> list[str]:
    notes = []
    if results.unmatched_gt_classes:
        notes.append(
            f"{field}: ground-truth classes the prediction does not name: "
            + ", ".join(results.unmatched_gt_classes)
        )
    if results.unmatched_pred_classes:
        notes.append(
            f"{field}: predicted classes the ground truth does not name: "
            + ", ".join(results.unmatched_pred_classes)
        )
    for side, values in (
        ("ground-truth", results.unnamed_gt_values),
        ("predicted", results.unnamed_pred_values),
    ):
        if values:
            notes.append(f"{field}: {side} mask values without a name: {values}")
    if results.num_resized:
        notes.append(
            f"{field}: {results.num_resized} prediction(s) resized (nearest) to the ground truth"
        )
    if results.num_skipped:
        notes.append(f"{field}: {results.num_skipped} sample(s) skipped for a missing mask")
    return notes


def format_report(
    results: MIoUResults, classes: Sequence[str] | None = None, digits: int = 2
) -> str:
    """One evaluation's per-class IoU and accuracy and its mIoU, mAcc, aAcc, in percent."""
    report = results.report(classes=classes)
    rows = [
        [
            name,
            percent(report[name]["iou"], digits),
            percent(report[name]["accuracy"], digits),
            str(report[name]["support"]),
        ]
        for name in results.class_names
        if name in report
    ]
    rows.append([])
    rows.append(["mIoU / mAcc", percent(results.miou, digits), percent(results.macc, digits), ""])
    rows.append(["aAcc", percent(results.aacc, digits), "", ""])
    lines = _format_table(["class", "IoU", "Acc", "gt pixels"], rows)
    lines.extend(_notes(results.config.pred_field, results))
    return "\n".join(lines)


def class_union(results_by_field: Mapping[str, MIoUResults]) -> list[str]:
    """Every class name of several evaluations, in first-seen order."""
    names: dict[str, None] = {}
    for results in results_by_field.values():
        names.update(dict.fromkeys(results.class_names))
    return list(names)


def format_comparison_table(results_by_field: Mapping[str, MIoUResults], digits: int = 2) -> str:
    """mIoU, mAcc, aAcc and per-class IoU of several fields side by side, in percent.

    Each field after the first is followed by a ``diff`` column: its value minus the first
    field's, in points. Classes absent from every field (IoU NaN everywhere) are left out and
    counted in a note; notes also list unmatched class names, unnamed values, resized and
    skipped samples.

    Args:
        results_by_field: ``{pred_field: MIoUResults}``, e.g. from :func:`compare_miou`.
        digits: decimals of the percentages.

    Returns:
        The table as text.
    """
    if not results_by_field:
        raise ValueError("Expected at least one field in `results_by_field`, but got none")
    fields = list(results_by_field)
    first = results_by_field[fields[0]]
    header = ["", fields[0]]
    for field in fields[1:]:
        header += [field, "diff"]

    def row(label: str, values: list[float]) -> list[str]:
        cells = [label, percent(values[0], digits)]
        for value in values[1:]:
            cells += [percent(value, digits), _delta(value, values[0], digits)]
        return cells

    rows = [
        row("mIoU", [r.miou for r in results_by_field.values()]),
        row("mAcc", [r.macc for r in results_by_field.values()]),
        row("aAcc", [r.aacc for r in results_by_field.values()]),
        [],
        ["IoU per class:"] + [""] * (len(header) - 1),
    ]
    omitted = 0
    for name in class_union(results_by_field):
        values = [r.per_class_iou.get(name, math.nan) for r in results_by_field.values()]
        if all(math.isnan(v) for v in values):
            omitted += 1
            continue
        rows.append(row(name, values))
    gt_field = first.config.gt_field if first.config is not None else "ground truth"
    lines = [f"ground truth {gt_field!r}; values in %; diff = field minus {fields[0]!r}, in points"]
    lines += _format_table(header, rows)
    if omitted:
        lines.append(
            f"{omitted} class(es) absent from every field's predictions and ground truth not shown"
        )
    for field, results in results_by_field.items():
        lines.extend(_notes(field, results))
    return "\n".join(lines)
