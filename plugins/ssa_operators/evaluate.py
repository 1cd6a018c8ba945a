"""mIoU: the ``evaluate_miou`` operator, and the ``miou`` metric for FiftyOne's own evaluations."""

from __future__ import annotations

import math
import re

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from .forms import (
    SSAOperator,
    block,
    dropdown,
    field_problem,
    has_mask_targets,
    label_fields,
    notice,
    require_dataset,
    target_input,
    target_samples,
)
from .library import import_library

DEFAULT_EVAL_KEY = import_library("fiftyone_ssa.fields").DEFAULT_EVAL_KEY
# The result table's columns: key -> heading.
RESULT_COLUMNS = {
    "pred_field": "Prediction",
    "eval_key": "Evaluation key",
    "miou": "mIoU",
    "macc": "mAcc",
    "aacc": "aAcc",
}
# Field names that say "ground truth": gt, gt_fine, ground_truth, coco_gt, truth...
GROUND_TRUTH_NAME = re.compile(r"(^|_)(gt|ground_?truth|truth)(_|$)", re.IGNORECASE)


def eval_keys(eval_key: str, pred_fields: list[str]) -> dict[str, str]:
    """Prediction field -> evaluation key, as the library names them
    (``fiftyone_ssa.fields.evaluation_keys``)."""
    return import_library("fiftyone_ssa.fields").evaluation_keys(eval_key, pred_fields)


def run_output_fields(dataset, fields: list[str]) -> set[str]:
    """The ``fields`` that fiftyone-ssa runs write: each label field recorded in
    ``dataset.info`` (``runs.RUNS_INFO_KEY``) and its ``<label_field>_...`` siblings."""
    recorded = dataset.info.get(import_library("fiftyone_ssa.labelling.record").RUNS_INFO_KEY) or {}
    return {
        field
        for field in fields
        for label_field in recorded
        if field == label_field or field.startswith(f"{label_field}_")
    }


def default_ground_truth(dataset, fields: list[str]) -> str | None:
    """The ground truth to preselect among the Segmentation ``fields``, or None when unclear.

    ``ground_truth`` (FiftyOne's convention); else the only field no fiftyone-ssa run wrote;
    else the only such field named like a ground truth (``gt``, ``gt_...``, ``..._truth``...).
    """
    if "ground_truth" in fields:
        return "ground_truth"
    outputs = run_output_fields(dataset, fields)
    candidates = [f for f in fields if f not in outputs]
    if len(candidates) == 1:
        return candidates[0]
    named = [f for f in candidates if GROUND_TRUTH_NAME.search(f)]
    return named[0] if len(named) == 1 else None


def default_predictions(dataset, fields: list[str], gt_field: str | None) -> list[str]:
    """The predictions to preselect: the Segmentation ``fields`` fiftyone-ssa runs wrote
    (e.g. ``ssa`` and ``ssa_branch``), once a ground truth is chosen among ``fields``."""
    if gt_field not in fields:
        return []
    outputs = run_output_fields(dataset, fields)
    return [f for f in fields if f in outputs and f != gt_field]


def _param_or(params: dict, name: str, default):
    """``params[name]``, or ``default`` where the form left it out (None): a value the user
    cleared ("" or []) stays cleared."""
    value = params.get(name)
    return default if value is None else value


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class EvaluateMIoU(SSAOperator):
    """mmsegmentation's mIoU of one or more Segmentation fields against a ground truth.

    Each prediction field becomes a FiftyOne evaluation run (shown in the App's Model
    Evaluation panel) and every sample gets ``<eval_key>_miou`` and ``<eval_key>_aacc``.
    """

    default_delegated = False

    @property
    def config(self):
        return self._config(
            "evaluate_miou",
            "Evaluate mIoU",
            "mIoU, mAcc and aAcc of Segmentation fields against a ground-truth field",
        )

    def __call__(
        self,
        sample_collection,
        pred_fields: str | list[str],
        gt_field: str = "ground_truth",
        eval_key: str | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
    ):
        """Evaluates ``pred_fields`` against ``gt_field`` through the operator.

        Args:
            eval_key: store the runs under this key (suffixed with the field name when there
                are several fields); None only computes.

        Returns:
            an ``ExecutionResult``; ``result.result["results"]`` has one entry per field.
        """
        if isinstance(pred_fields, str):
            pred_fields = [pred_fields]
        params = {
            "pred_fields": list(pred_fields),
            "gt_field": gt_field,
            "save": eval_key is not None,
            "eval_key": eval_key,
            "ignore_index": ignore_index,
            "reduce_zero_label": reduce_zero_label,
            "overwrite": overwrite,
        }
        return self._call(sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if require_dataset(inputs, ctx):
            target_input(inputs, ctx)
            pred_fields = self._fields_inputs(inputs, ctx)
            self._key_inputs(inputs, ctx, pred_fields)
            inputs.int(
                "ignore_index",
                default=255,
                required=False,
                min=0,
                label="Ignore index",
                description="ground-truth value whose pixels are not counted",
            )
            inputs.bool(
                "reduce_zero_label",
                default=False,
                label="Reduce zero label",
                description="ADE20K raw annotations: 0 is ignored, other ids shift down by one",
            )
        return types.Property(inputs, view=types.View(label="Evaluate mIoU"))

    def _fields_inputs(self, inputs, ctx) -> list[str] | None:
        """Ground truth and predictions; returns the predictions, or None while the form
        shows a problem (only the first one: fix it and the next one shows)."""
        dataset = ctx.dataset
        fields = label_fields(dataset, fo.Segmentation)
        if not fields:
            block(inputs, "fields_error", "This dataset has no Segmentation field to evaluate")
            return None
        default_gt = default_ground_truth(dataset, fields)
        gt_field = _param_or(ctx.params, "gt_field", default_gt)
        problem = None
        if not gt_field:
            problem = ("gt_error", "Choose the ground-truth Segmentation field")
        elif gt_field not in fields:
            problem = (
                "gt_error",
                f"Ground-truth field {field_problem(dataset, gt_field, 'Segmentation')}",
            )
        if problem is not None:
            block(inputs, *problem)
        # Not "required": the App would add its own "Required property" under the field to
        # the message above; the message keeps the form invalid.
        dropdown(inputs, "gt_field", fields, "Ground truth", default=default_gt, required=False)

        choices = [f for f in fields if f != gt_field]
        default_preds = default_predictions(dataset, fields, gt_field)
        inputs.list(
            "pred_fields",
            types.String(),
            default=default_preds or None,
            required=False,
            label="Prediction fields",
            description="one evaluation run per field",
            view=types.AutocompleteView(
                multiple=True,
                allow_user_input=False,
                choices=[types.Choice(value=f, label=f) for f in choices],
            ),
        )
        if problem is not None:
            return None
        pred_fields = list(_param_or(ctx.params, "pred_fields", default_preds) or [])
        if not pred_fields:
            block(inputs, "pred_error", "Choose at least one prediction field")
            return None
        for field in pred_fields:
            if field == gt_field:
                block(inputs, "pred_error", f"{field!r} is the ground truth itself")
                return None
            if field not in fields:
                problem = field_problem(dataset, field, "Segmentation")
                block(inputs, "pred_error", f"Prediction field {problem}")
                return None
        if _mask_targets_notices(inputs, dataset, gt_field, pred_fields):
            return None
        return pred_fields

    def _key_inputs(self, inputs, ctx, pred_fields: list[str] | None) -> None:
        """The evaluation key; its problems show once the fields have none."""
        inputs.bool(
            "save",
            default=True,
            label="Save as evaluation runs",
            description="shown in the Model Evaluation panel, with per-sample scores",
        )
        if not ctx.params.get("save", True):
            return
        inputs.str("eval_key", default=DEFAULT_EVAL_KEY, required=False, label="Evaluation key")
        inputs.bool("overwrite", default=False, label="Overwrite existing evaluations")
        if pred_fields is None:
            return
        eval_key = ctx.params.get("eval_key") or DEFAULT_EVAL_KEY
        if not isinstance(eval_key, str) or not eval_key.isidentifier():
            block(inputs, "eval_key_error", f"{eval_key!r} is not a usable evaluation key")
            return
        keys = eval_keys(eval_key, pred_fields)
        existing = [k for k in keys.values() if ctx.dataset.has_evaluation(k)]
        if existing and not ctx.params.get("overwrite", False):
            block(
                inputs,
                "eval_key_exists",
                f"Evaluation {', '.join(existing)} already exists: tick overwrite or choose "
                "another key",
                warning=True,
            )

    def execute(self, ctx):
        evaluation = import_library("fiftyone_ssa.evaluation.miou")
        params = ctx.params
        samples = target_samples(ctx)
        fields = label_fields(ctx.dataset, fo.Segmentation)
        gt_field = _param_or(params, "gt_field", default_ground_truth(ctx.dataset, fields))
        pred_fields = list(
            _param_or(params, "pred_fields", default_predictions(ctx.dataset, fields, gt_field))
        )
        save = params.get("save", True)
        keys = eval_keys(params.get("eval_key") or DEFAULT_EVAL_KEY, pred_fields) if save else {}
        evaluation.check_evaluable(samples, pred_fields, gt_field)  # before any run is saved
        rows = []
        for i, field in enumerate(pred_fields):
            if ctx.delegated:
                ctx.set_progress(progress=i / len(pred_fields), label=f"evaluating {field}")
            results = evaluation.evaluate_miou(
                samples,
                field,
                gt_field,
                eval_key=keys.get(field),
                ignore_index=int(params.get("ignore_index", 255)),
                reduce_zero_label=bool(params.get("reduce_zero_label", False)),
                progress=False,
                overwrite=bool(params.get("overwrite", False)),
            )
            rows.append(
                {
                    "pred_field": field,
                    "eval_key": keys.get(field),
                    "miou": _number(results.miou),
                    "macc": _number(results.macc),
                    "aacc": _number(results.aacc),
                }
            )
        self._finish(ctx)
        return {"gt_field": gt_field, "results": rows}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("gt_field", label="Ground truth")
        row = types.Object()
        table = types.TableView()  # the App shows the columns a table view names, no others
        for key, label in RESULT_COLUMNS.items():
            if key in ("pred_field", "eval_key"):
                row.str(key, label=label)
            else:
                row.float(key, label=label)
            table.add_column(key, label=label)
        outputs.list("results", row, label="Results", view=table)
        return types.Property(outputs, view=types.View(label="mIoU"))


def _mask_targets_notices(inputs, dataset, gt_field: str, pred_fields: list[str]) -> bool:
    """Warns where class names cannot be matched (classes are matched by name); refuses
    predictions that name their ids differently against a ground truth without names (the
    library's ``check_ground_truth_targets``, without importing it into the form).

    Returns:
        whether the form was refused.
    """
    gt_named = has_mask_targets(dataset, gt_field)
    named = [f for f in pred_fields if has_mask_targets(dataset, f)]
    unnamed = [f for f in pred_fields if f not in named]
    distinct = {
        tuple(sorted((int(k), str(v)) for k, v in dataset.get_mask_targets(f).items()))
        for f in named
    }
    if not gt_named and len(distinct) > 1:
        block(
            inputs,
            "gt_targets_error",
            f"Ground truth {gt_field!r} has no mask targets and {', '.join(named)} name their "
            f"class ids differently: set mask targets on {gt_field!r} to match classes by name",
        )
        return True
    if not gt_named and named:
        notice(
            inputs,
            "gt_targets_warning",
            f"Ground truth {gt_field!r} has no mask targets: its ids are read with the class "
            f"names of {named[0]!r}, so both must use the same ids",
        )
    elif gt_named and unnamed:
        notice(
            inputs,
            "pred_targets_warning",
            f"{', '.join(unnamed)} has no mask targets: its ids are read with the ground "
            "truth's class names",
        )
    elif not gt_named:
        notice(
            inputs,
            "targets_warning",
            "No field has mask targets: ids are compared directly and classes are named by id",
        )
    return False


class MIoUMetric(foo.EvaluationMetric):
    """mIoU (mmsegmentation's definition) as a custom metric of segmentation evaluations.

    ``dataset.evaluate_segmentations(..., custom_metrics=["@fiftyone-ssa/ssa/miou"])``, or
    ticking it in the App's evaluation form, stores it on the results, where the Model
    Evaluation panel shows it. Per class, IoU = intersection / union of the whole
    collection's pixels; mIoU is the mean over classes present in prediction or ground truth.
    """

    @property
    def config(self):
        config = foo.EvaluationMetricConfig(
            name="miou",
            label="mIoU",
            description="Mean intersection over union across classes (mmsegmentation)",
            eval_types=["segmentation"],
            lower_is_better=False,
            unlisted=True,
        )
        # FiftyOne's evaluations read the flag from ``config.kwargs`` when storing the value
        # (fiftyone/utils/eval/base.py), where the config's own argument does not land
        config.kwargs["lower_is_better"] = False
        return config

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.list(
            "exclude_classes",
            types.String(),
            required=False,
            label="Classes left out",
            description="their ground-truth pixels are ignored and they are not averaged",
            view=types.AutocompleteView(multiple=True, allow_user_input=True, choices=[]),
        )
        return types.Property(inputs)

    def compute(self, samples, results, exclude_classes=None, **kwargs):
        import numpy as np
        import torch

        metrics = import_library("fiftyone_ssa.core.metrics")
        classes = [str(c) for c in results.classes]
        matrix = np.array(_confusion_matrix(results, classes), dtype=np.int64)
        names = _class_names(samples, results, classes)
        excluded = [
            i for i, (c, n) in enumerate(zip(classes, names)) if {c, n} & set(exclude_classes or [])
        ]
        matrix[excluded, :] = 0
        iou = metrics.segmentation_metrics(torch.from_numpy(matrix)).iou.numpy()
        kept = np.delete(iou, excluded)
        if kept.size == 0 or np.isnan(kept).all():
            return None
        return float(np.nanmean(kept))


def _class_names(samples, results, classes: list[str]) -> list[str]:
    """The ground truth's mask-target name of each class (evaluations run without
    ``mask_targets`` name their classes by pixel value)."""
    gt_field = getattr(results.config, "gt_field", None)
    targets = samples.get_mask_targets(gt_field) if gt_field else None
    targets = {str(k): str(v) for k, v in (targets or {}).items()}
    return [targets.get(c, c) for c in classes]


def _confusion_matrix(results, classes: list[str]):
    """(C, C) pixel counts, rows ground truth, in the order of ``classes``."""
    matrix = getattr(results, "pixel_confusion_matrix", None)
    if matrix is not None:
        return matrix
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    weights = results.weights if results.weights is not None else [1] * len(results.ytrue)
    for truth, pred, weight in zip(results.ytrue, results.ypred, weights):
        if truth in index and pred in index:
            matrix[index[truth], index[pred]] += int(weight)
    return matrix
