"""Several prediction fields against one ground truth: mIoU side by side, as a table or a chart.

Typical use: SSA's output against the semantic branch alone::

    results = compare_miou(dataset, ["ssa", "ssa_branch"], "ground_truth", eval_key="miou")
    print(format_comparison_table(results))
    plot_per_class_iou(results, "per_class_iou.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fiftyone_ssa.evaluation import MIoUResults

__all__ = [
    "compare_miou",
    "comparison_eval_keys",
    "format_comparison_table",
    "format_report",
    "plot_per_class_iou",
]


def comparison_eval_keys(eval_key: str | None, pred_fields: Sequence[str]) -> dict[str, str | None]:
    """The evaluation key of each prediction field.

    One field keeps ``eval_key`` as is; with several, field ``f`` is stored under
    ``<eval_key>_<f>`` (dots in ``f`` become underscores). No ``eval_key``: nothing is stored.

    Raises:
        ValueError: if two fields would share a key.
    """
    if eval_key is None:
        return dict.fromkeys(pred_fields)
    if len(pred_fields) == 1:
        return {pred_fields[0]: eval_key}
    keys = {field: f"{eval_key}_{field.replace('.', '_')}" for field in pred_fields}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"Expected distinct evaluation keys, but got {keys}")
    return keys


def compare_miou(
    samples: Any,
    pred_fields: Sequence[str],
    gt_field: str,
    eval_key: str | None = None,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    progress: bool | Any | None = None,
) -> dict[str, MIoUResults]:
    """Evaluates each prediction field against ``gt_field`` with :func:`evaluate_miou`.

    Args:
        samples: a FiftyOne dataset or view.
        pred_fields: the predicted Segmentation fields (the first is the reference of the
            differences in :func:`format_comparison_table`).
        gt_field: the ground-truth Segmentation field.
        eval_key: store the runs: under ``eval_key`` for one field, ``<eval_key>_<field>`` for
            several (see :func:`comparison_eval_keys`).
        ignore_index: ground-truth value whose pixels are excluded.
        reduce_zero_label: ground truth 0 ignored, other values shifted down by one.
        progress: as in :func:`evaluate_miou`.

    Returns:
        ``{pred_field: MIoUResults}`` in the order of ``pred_fields``.
    """
    from fiftyone_ssa.evaluation import check_evaluable, check_ground_truth_targets, evaluate_miou

    if isinstance(pred_fields, str):
        pred_fields = [pred_fields]
    pred_fields = list(pred_fields)
    if not pred_fields or len(set(pred_fields)) != len(pred_fields):
        raise ValueError(f"Expected distinct prediction fields, but got {pred_fields}")
    check_ground_truth_targets(samples, gt_field, pred_fields)
    check_evaluable(samples, pred_fields, gt_field)  # before any run is saved
    keys = comparison_eval_keys(eval_key, pred_fields)
    return {
        field: evaluate_miou(
            samples,
            field,
            gt_field,
            eval_key=keys[field],
            ignore_index=ignore_index,
            reduce_zero_label=reduce_zero_label,
            progress=progress,
        )
        for field in pred_fields
    }


def _percent(value: float, digits: int) -> str:
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
            _percent(report[name]["iou"], digits),
            _percent(report[name]["accuracy"], digits),
            str(report[name]["support"]),
        ]
        for name in results.class_names
        if name in report
    ]
    rows.append([])
    rows.append(["mIoU / mAcc", _percent(results.miou, digits), _percent(results.macc, digits), ""])
    rows.append(["aAcc", _percent(results.aacc, digits), "", ""])
    lines = _format_table(["class", "IoU", "Acc", "gt pixels"], rows)
    lines.extend(_notes(results.config.pred_field, results))
    return "\n".join(lines)


def _class_union(results_by_field: Mapping[str, MIoUResults]) -> list[str]:
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
        cells = [label, _percent(values[0], digits)]
        for value in values[1:]:
            cells += [_percent(value, digits), _delta(value, values[0], digits)]
        return cells

    rows = [
        row("mIoU", [r.miou for r in results_by_field.values()]),
        row("mAcc", [r.macc for r in results_by_field.values()]),
        row("aAcc", [r.aacc for r in results_by_field.values()]),
        [],
        ["IoU per class:"] + [""] * (len(header) - 1),
    ]
    omitted = 0
    for name in _class_union(results_by_field):
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


def check_plot_path(path: str | os.PathLike) -> str:
    """``path`` as a string, once it is known that a chart can be written there.

    Raises:
        ImportError: matplotlib (the ``plot`` extra) is missing.
        ValueError: the extension names no image format matplotlib writes.
    """
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib: pip install matplotlib (or the `plot` extra, "
            "pip install '.[plot]' in a clone of fiftyone-ssa)"
        ) from err
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if extension and extension not in formats:
        raise ValueError(
            f"Expected a chart file ending in one of {', '.join(sorted(formats))} (or no "
            f"extension, PNG), but got {path!r}"
        )
    return path


def plot_per_class_iou(
    results_by_field: Mapping[str, MIoUResults],
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """Writes a grouped bar chart of per-class IoU (one bar per field) as an image.

    Classes absent from every field are left out. Needs matplotlib (the ``plot`` extra).

    Args:
        results_by_field: ``{pred_field: MIoUResults}``.
        path: the image file to write (PNG unless its extension says otherwise).
        title: the chart title (default: the fields' mIoU).

    Returns:
        ``path`` as a string.
    """
    path = check_plot_path(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results_by_field:
        raise ValueError("Expected at least one field in `results_by_field`, but got none")

    classes = [
        name
        for name in _class_union(results_by_field)
        if not all(
            math.isnan(r.per_class_iou.get(name, math.nan)) for r in results_by_field.values()
        )
    ]
    num_fields = len(results_by_field)
    width = 0.8 / num_fields
    figure = Figure(
        figsize=(min(100.0, max(6.0, 0.3 * len(classes) * (1 + 0.5 * num_fields))), 4.5)
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(classes)))
    for k, (field, results) in enumerate(results_by_field.items()):
        values = [100 * results.per_class_iou.get(name, math.nan) for name in classes]
        offsets = [p - 0.4 + width * (k + 0.5) for p in positions]
        axes.bar(offsets, values, width=width, label=f"{field} (mIoU {_percent(results.miou, 1)})")
    axes.set_xticks(positions)
    axes.set_xticklabels(classes, rotation=90, fontsize=8)
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.set_xlim(-0.6, max(len(classes), 1) - 0.4)
    axes.legend(loc="upper right", fontsize=8)
    axes.set_title(title or "Per-class IoU")
    figure.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
