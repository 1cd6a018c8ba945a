"""Several prediction fields against one ground truth: mIoU side by side, as a table or a chart.

Typical use: SSA's output against the semantic branch alone::

    results = compare_miou(dataset, ["ssa", "ssa_branch"], "ground_truth", eval_key="miou")
    print(report.format_comparison_table(results))
    plot_per_class_iou(results, "per_class_iou.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fiftyone_ssa.evaluation.report import class_union, percent
from fiftyone_ssa.fields import evaluation_keys

if TYPE_CHECKING:
    from fiftyone_ssa.evaluation.miou import MIoUResults

__all__ = ["compare_miou", "check_plot_path", "plot_per_class_iou"]


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
            differences in :func:`~fiftyone_ssa.evaluation.report.format_comparison_table`).
        gt_field: the ground-truth Segmentation field.
        eval_key: store the runs: under ``eval_key`` for one field, ``<eval_key>_<field>`` for
            several (see :func:`fiftyone_ssa.fields.evaluation_keys`).
        ignore_index: ground-truth value whose pixels are excluded.
        reduce_zero_label: ground truth 0 ignored, other values shifted down by one.
        progress: as in :func:`evaluate_miou`.

    Returns:
        ``{pred_field: MIoUResults}`` in the order of ``pred_fields``.
    """
    from fiftyone_ssa.evaluation.miou import (
        check_evaluable,
        check_ground_truth_targets,
        evaluate_miou,
    )

    if isinstance(pred_fields, str):
        pred_fields = [pred_fields]
    pred_fields = list(pred_fields)
    if not pred_fields or len(set(pred_fields)) != len(pred_fields):
        raise ValueError(f"Expected distinct prediction fields, but got {pred_fields}")
    check_ground_truth_targets(samples, gt_field, pred_fields)
    check_evaluable(samples, pred_fields, gt_field)  # before any run is saved
    keys = evaluation_keys(eval_key, pred_fields)
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
        for name in class_union(results_by_field)
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
        axes.bar(offsets, values, width=width, label=f"{field} (mIoU {percent(results.miou, 1)})")
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
