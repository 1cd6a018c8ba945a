"""mIoU of a Segmentation field against a ground-truth field, as a FiftyOne evaluation run.

The metric is mmsegmentation's (see :mod:`fiftyone_ssa.core.metrics`): per-class IoU accumulated
over the whole collection, mIoU as the NaN-mean over classes, aAcc as correct / valid pixels.
The run is a real FiftyOne segmentation evaluation (method ``"miou"``): ``list_evaluations``,
``load_evaluation_results``, ``rename_evaluation``, ``delete_evaluation`` and the App's Model
Evaluation panel all work with it.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.validation as fov
import numpy as np
import torch
from fiftyone.utils.eval.segmentation import (
    SegmentationEvaluation,
    SegmentationEvaluationConfig,
    SegmentationResults,
)

from fiftyone_ssa.core.metrics import (
    ClassMatcher,
    StreamingConfusionMatrix,
    resize_nearest,
    segmentation_metrics,
)
from fiftyone_ssa.core.metrics import reduce_zero_label as to_training_ids
from fiftyone_ssa.evaluation.report import format_report
from fiftyone_ssa.fields import check_field_in_view
from fiftyone_ssa.labels import float_or_none

logger = logging.getLogger(__name__)

# The plugin's metrics (``@fiftyone-ssa/ssa/miou``): the keys of the entries evaluations store.
METRIC_URI_PREFIX = "@fiftyone-ssa/ssa"

__all__ = ["MIoUEvaluation", "MIoUEvaluationConfig", "MIoUResults", "evaluate_miou"]


def check_evaluable(samples, pred_fields: Sequence[str], gt_field: str) -> None:
    """Raises ValueError (one line) unless some sample has ``gt_field`` and each prediction.

    Checked for every field before any evaluation is saved.
    """
    if not len(samples):
        raise ValueError(f"nothing to evaluate against {gt_field!r}: the collection is empty")
    for field in [gt_field, *pred_fields]:
        check_field_in_view(samples, field)
    for field in pred_fields:
        if not samples.exists(field).exists(gt_field).limit(1).count():
            raise ValueError(
                f"nothing to evaluate {field!r} against {gt_field!r}: no sample has both labels"
            )


def evaluate_miou(
    samples: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str | None = None,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    progress: bool | Any | None = None,
    overwrite: bool = False,
) -> MIoUResults:
    """Evaluates a Segmentation field against ground truth with mmsegmentation's mIoU.

    Definition: per class, IoU = (sum over all images of the intersections) / (sum over all images
    of the unions); mIoU = mean of the per-class IoUs ignoring classes absent from both prediction
    and ground truth (NaN-mean; a class predicted but never in the ground truth scores 0 and
    counts); per-class accuracy = intersections / ground-truth pixels; aAcc = correct pixels /
    valid pixels. Pixels whose ground truth is ``ignore_index`` are excluded; ``reduce_zero_label``
    (ADE20K's raw annotations) makes ground truth 0 ignored and shifts the other values down by one
    before anything else.

    Classes are matched by NAME through the fields' mask targets (``samples.mask_targets[field]``,
    else ``samples.default_mask_targets``), so prediction and ground truth may use different ids.
    A name only one side declares is kept as a class (IoU 0 once seen, NaN if never seen) and
    listed in ``unmatched_gt_classes`` / ``unmatched_pred_classes``; a mask value its field does
    not name becomes a class named after the value (``"7"``) and is listed in
    ``unnamed_gt_values`` / ``unnamed_pred_values``. When only one field has mask targets, both
    are read with them; when neither has, ids are matched directly.
    A prediction of ``ignore_index`` (pixels the prediction leaves unlabelled) is a miss of the
    ground-truth class, not a class of its own (its IoU is NaN and does not count in mIoU, as in
    mmsegmentation; listed in ``unscored_classes``), unless the ground truth has that class.

    Masks may be stored in the database or as ``mask_path``. A prediction whose size differs from
    its ground truth is resized to it (nearest neighbour, with a warning). RGB masks are not
    supported. Samples missing either mask (or its ``mask_path`` file) are skipped (with a
    warning).

    With ``eval_key``, the run is saved on the dataset and every sample gets ``<eval_key>_miou``
    and ``<eval_key>_aacc``: the same definition applied to that sample alone (None where it has
    no valid pixel or was skipped), to sort the worst samples first. An existing run under
    ``eval_key`` is replaced only once the new one is complete: if the evaluation fails, the
    old run and its sample fields are left as they were.

    Args:
        samples: a FiftyOne dataset or view (not grouped; sample-level fields).
        pred_field: the predicted ``fo.Segmentation`` field.
        gt_field: the ground-truth ``fo.Segmentation`` field.
        eval_key: where to store the run, or None to only compute.
        ignore_index: ground-truth value (after ``reduce_zero_label``) whose pixels are excluded.
        reduce_zero_label: treat the ground truth as ADE20K raw annotations (see above).
        progress: render a progress bar (True/False), use FiftyOne's default (None), or a
            progress callback.
        overwrite: replace an existing run under ``eval_key`` whatever it evaluated; without
            it, only a run of the same fields is replaced (FiftyOne's rule).

    Returns:
        The :class:`MIoUResults`.

    Raises:
        ValueError: fields that are not sample-level Segmentation fields, nothing to evaluate
            (no sample has both labels), an ``eval_key`` whose fields are someone else's, or
            (without ``overwrite``) an ``eval_key`` holding a run of other fields.
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"Expected `ignore_index` to be an int, but got {ignore_index!r}")
    fov.validate_non_grouped_collection(samples)
    fov.validate_collection_label_fields(
        samples, (pred_field, gt_field), fol.Segmentation, same_type=True
    )
    for field in (pred_field, gt_field):
        if samples._is_frame_field(field):
            raise ValueError(
                f"Expected sample-level Segmentation fields, but got the frame field {field!r}"
            )
    check_evaluable(samples, [pred_field], gt_field)
    config = MIoUEvaluationConfig(
        pred_field,
        gt_field,
        ignore_index=int(ignore_index),
        reduce_zero_label=bool(reduce_zero_label),
    )
    method = config.build()
    method.ensure_requirements()
    dataset = samples._dataset
    replacing = eval_key is not None and eval_key in dataset.list_evaluations()
    if replacing and not overwrite:
        method.validate_run(samples, eval_key)  # FiftyOne's rule: same kind, same fields
    # A run replacing another is computed under a scratch key and takes its key only once
    # complete, so that a failure leaves the old run and its sample fields as they were.
    run_key = f"{eval_key}_new_{uuid.uuid4().hex[:8]}" if replacing else eval_key
    if eval_key is not None and not replacing:
        schema = dataset.get_field_schema()
        taken = [f for f in method.get_fields(samples, eval_key, False) if f in schema]
        if taken:
            raise ValueError(
                f"field {taken[0]!r} already exists and is not from evaluation {eval_key!r}; "
                "choose another eval_key"
            )
    method.register_run(samples, run_key)
    try:
        method.register_samples(samples, run_key)
        results = method.evaluate_samples(samples, eval_key=run_key, progress=progress)
        if run_key is not None:
            method.save_run_results(samples, run_key, results)
            method.add_fields_to_sidebar_group(samples, run_key, omit_fields=(pred_field, gt_field))
    except BaseException:
        if run_key is not None:  # no half-saved run: its registration and sample fields go
            dataset.delete_evaluation(run_key)
        raise
    if replacing:
        dataset.delete_evaluation(eval_key)
        dataset.rename_evaluation(run_key, eval_key)  # also renames the cached results' key
    return results


class MIoUEvaluationConfig(SegmentationEvaluationConfig):
    """Configuration of an mIoU evaluation run (FiftyOne segmentation evaluation, method "miou").

    Args:
        pred_field: the predicted Segmentation field.
        gt_field: the ground-truth Segmentation field.
        ignore_index: ground-truth value whose pixels are excluded.
        reduce_zero_label: ground truth 0 ignored, other values shifted down by one.
        **kwargs: passed to FiftyOne's ``SegmentationEvaluationConfig``.
    """

    def __init__(
        self,
        pred_field: str,
        gt_field: str,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pred_field, gt_field, **kwargs)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label

    @property
    def method(self) -> str:
        return "miou"


class MIoUEvaluation(SegmentationEvaluation):
    """The mIoU evaluation run: streams the samples into one running confusion matrix.

    Args:
        config: an :class:`MIoUEvaluationConfig`.
    """

    def register_samples(self, samples: Any, eval_key: str | None) -> None:
        if eval_key is None:
            return
        for field in self.get_fields(samples, eval_key, include_custom_metrics=False):
            samples._dataset.add_sample_field(field, fof.FloatField)

    def get_fields(self, samples: Any, eval_key: str, include_custom_metrics: bool = True):
        fields = [f"{eval_key}_miou", f"{eval_key}_aacc"]
        if include_custom_metrics:
            fields.extend(self.get_custom_metric_fields(samples, eval_key))
        return fields

    def cleanup(self, samples: Any, eval_key: str) -> None:
        fields = self.get_fields(samples, eval_key, include_custom_metrics=False)
        samples._dataset.delete_sample_fields(fields, error_level=1)
        self.cleanup_custom_metrics(samples, eval_key)
        samples._delete_empty_sidebar_group(eval_key)

    def evaluate_samples(
        self, samples: Any, eval_key: str | None = None, progress: bool | Any | None = None
    ) -> MIoUResults:
        """Evaluates every sample of ``samples``; see :func:`evaluate_miou`."""
        cfg = self.config
        gt_targets, pred_targets = _evaluation_mask_targets(
            samples, cfg.gt_field, cfg.pred_field, cfg.ignore_index, cfg.reduce_zero_label
        )
        names = ClassMatcher(gt_targets, pred_targets)
        # Class ids arrive already filtered to valid pixels, so nothing is ignored here.
        stream = StreamingConfusionMatrix(len(names), ignore_index=-1)
        matches: list[tuple[str, str, int, str, str]] = []
        save = eval_key is not None
        miou_field, aacc_field = f"{eval_key}_miou", f"{eval_key}_aacc"
        num_resized = num_skipped = 0

        view = samples.select_fields([cfg.gt_field, cfg.pred_field])
        for sample in view.iter_samples(progress=progress, autosave=save):
            gt_seg, pred_seg = sample[cfg.gt_field], sample[cfg.pred_field]
            gt = _read_id_map(gt_seg, cfg.gt_field)
            pred = _read_id_map(pred_seg, cfg.pred_field)
            if gt is None or pred is None:
                num_skipped += 1
                if save:
                    sample[miou_field] = sample[aacc_field] = None
                continue
            if pred.shape != gt.shape:
                pred = resize_nearest(pred, tuple(gt.shape))
                num_resized += 1
            if cfg.reduce_zero_label:
                gt = to_training_ids(gt, cfg.ignore_index)
            valid = gt != cfg.ignore_index
            gt_classes = names.gt_classes(gt[valid])
            pred_classes = names.pred_classes(pred[valid])
            stream.grow(len(names))
            image = stream.update(pred_classes, gt_classes)
            if save:
                image_metrics = segmentation_metrics(image, _unscored(names, cfg.ignore_index))
                sample[miou_field] = float_or_none(image_metrics.miou)
                sample[aacc_field] = float_or_none(image_metrics.aacc)
            # FiftyOne's (gt, pred, pixels, gt id, pred id) per cell: the App's panel reads them.
            counts = image.numpy()
            rows, cols = np.nonzero(counts)
            for i, j, n in zip(rows.tolist(), cols.tolist(), counts[rows, cols].tolist()):
                matches.append((names[i], names[j], n, gt_seg.id, pred_seg.id))

        if num_skipped:
            warnings.warn(
                f"Skipped {num_skipped} sample(s) missing a {cfg.gt_field!r} or "
                f"{cfg.pred_field!r} mask (no label, no mask, or a mask_path whose file is gone)",
                stacklevel=2,
            )
        if num_resized:
            warnings.warn(
                f"Resized the {cfg.pred_field!r} masks of {num_resized} sample(s) to their "
                f"ground-truth size (nearest neighbour)",
                stacklevel=2,
            )
        order = names.final_order()
        matrix = stream.matrix[order][:, order].numpy()
        unscored = [names[k] for k in _unscored(names, cfg.ignore_index)]
        results = MIoUResults(
            samples,
            cfg,
            eval_key,
            matrix,
            [names[i] for i in order],
            matches=matches,
            unmatched_gt_classes=names.unmatched_gt,
            unmatched_pred_classes=names.unmatched_pred,
            unnamed_gt_values=names.unnamed_gt_values,
            unnamed_pred_values=names.unnamed_pred_values,
            num_resized=num_resized,
            num_skipped=num_skipped,
            unscored_classes=unscored,
            backend=self,
        )
        for side, unmatched in (
            ("ground-truth", names.unmatched_gt),
            ("predicted", names.unmatched_pred),
        ):
            if unmatched:
                logger.warning(
                    "%s class names with no match on the other side: %s", side, unmatched
                )
        return results


class MIoUResults(SegmentationResults):
    """Results of an mIoU evaluation: FiftyOne's segmentation results plus mmsegmentation metrics.

    Attributes:
        pixel_confusion_matrix: (C, C) int pixel counts, rows ground truth, columns prediction,
            in the order of ``classes``.
        classes: the C class names.
        unmatched_gt_classes: names only the ground truth's mask targets declare.
        unmatched_pred_classes: names only the prediction's mask targets declare.
        unnamed_gt_values / unnamed_pred_values: mask values seen that the field's mask targets do
            not name (each became a class named after its value).
        num_resized: samples whose prediction was resized to the ground truth's size.
        num_skipped: samples skipped for a missing mask.
        unscored_classes: classes that only stand for predictions of ``ignore_index`` (pixels
            the prediction leaves unlabelled): misses of their ground-truth class, but no class
            of their own (IoU NaN, not in mIoU), as in mmsegmentation.
    """

    def __init__(
        self,
        samples: Any,
        config: Any,
        eval_key: str | None,
        pixel_confusion_matrix: Any,
        classes: Any,
        matches: list | None = None,
        missing: str | None = None,
        custom_metrics: dict | None = None,
        backend: Any = None,
        unmatched_gt_classes: list[str] | None = None,
        unmatched_pred_classes: list[str] | None = None,
        unnamed_gt_values: list[int] | None = None,
        unnamed_pred_values: list[int] | None = None,
        num_resized: int = 0,
        num_skipped: int = 0,
        unscored_classes: list[str] | None = None,
    ) -> None:
        classes = [str(c) for c in classes]
        matrix = np.asarray(pixel_confusion_matrix, dtype=np.int64).reshape(
            len(classes), len(classes)
        )
        super().__init__(
            samples,
            config,
            eval_key,
            matrix,
            classes,
            matches=matches,
            missing=missing,
            custom_metrics=custom_metrics,
            backend=backend,
        )
        self.unmatched_gt_classes = list(unmatched_gt_classes or [])
        self.unmatched_pred_classes = list(unmatched_pred_classes or [])
        self.unnamed_gt_values = [int(v) for v in unnamed_gt_values or []]
        self.unnamed_pred_values = [int(v) for v in unnamed_pred_values or []]
        self.num_resized = int(num_resized)
        self.num_skipped = int(num_skipped)
        self.unscored_classes = [str(c) for c in unscored_classes or []]
        self._segmentation_metrics = segmentation_metrics(
            torch.from_numpy(matrix),
            [classes.index(c) for c in self.unscored_classes if c in classes],
        )
        # Stored with the run: the App's Model Evaluation panel lists these entries.
        self.custom_metrics = {**self.panel_metrics(), **(custom_metrics or {})}

    @property
    def class_names(self) -> list[str]:
        """The class names, in the order of the confusion matrix."""
        return [str(c) for c in self.classes]

    @property
    def miou(self) -> float:
        """Mean IoU over classes present in prediction or ground truth (NaN if none)."""
        return self._segmentation_metrics.miou

    @property
    def macc(self) -> float:
        """Mean per-class accuracy over classes present in the ground truth."""
        return self._segmentation_metrics.macc

    @property
    def aacc(self) -> float:
        """Correct pixels / valid pixels over the whole collection."""
        return self._segmentation_metrics.aacc

    @property
    def iou(self) -> np.ndarray:
        """(C,) float64 per-class IoU in the order of ``classes`` (NaN: class absent)."""
        return self._segmentation_metrics.iou.numpy()

    @property
    def accuracy(self) -> np.ndarray:
        """(C,) float64 per-class accuracy (NaN: class absent from the ground truth)."""
        return self._segmentation_metrics.accuracy.numpy()

    @property
    def per_class_iou(self) -> dict[str, float]:
        """Class name -> IoU."""
        return dict(zip(self.class_names, self.iou.tolist()))

    @property
    def per_class_accuracy(self) -> dict[str, float]:
        """Class name -> accuracy."""
        return dict(zip(self.class_names, self.accuracy.tolist()))

    def panel_metrics(self) -> dict[str, dict[str, Any]]:
        """mIoU, mAcc, aAcc and each class's IoU as FiftyOne custom-metric entries.

        FiftyOne keeps the metrics an evaluation adds in ``results.custom_metrics`` (metric
        URI -> ``{"key", "value", "label", "lower_is_better"}``), and the App's Model
        Evaluation panel lists every entry in its summary table: mIoU under the URI of the
        plugin's ``@fiftyone-ssa/ssa/miou`` metric (so it lines up with a FiftyOne
        segmentation evaluation that computed that metric), then mAcc, aAcc and ``IoU <class>``
        per class. Undefined values (a class in neither field) are None, which the panel hides.
        ``metrics()`` returns them by ``key`` (``miou``, ``macc``, ``aacc``, ``iou_<class>``).
        """
        entries = {
            f"{METRIC_URI_PREFIX}/miou": ("miou", self.miou, "mIoU"),
            f"{METRIC_URI_PREFIX}/macc": ("macc", self.macc, "mAcc"),
            f"{METRIC_URI_PREFIX}/aacc": ("aacc", self.aacc, "aAcc"),
        }
        taken = set(entries)
        for name, iou in zip(self.class_names, self.iou.tolist()):
            # The panel reads an entry through a lodash path: no dots or brackets in its key.
            slug = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
            uri, n = f"{METRIC_URI_PREFIX}/iou/{slug}", 1
            while uri in taken:
                n += 1
                uri = f"{METRIC_URI_PREFIX}/iou/{slug}_{n}"
            taken.add(uri)
            entries[uri] = (f"iou_{uri.rsplit('/', 1)[1]}", iou, f"IoU {name}")
        return {
            uri: {
                "key": key,
                "value": float_or_none(value),
                "label": label,
                "lower_is_better": False,
            }
            for uri, (key, value, label) in entries.items()
        }

    def metrics(self, classes=None, average="micro", beta=1.0) -> dict[str, Any]:
        """FiftyOne's pixel classification metrics, plus ``miou``, ``macc`` and ``aacc``."""
        metrics = super().metrics(classes=classes, average=average, beta=beta)
        metrics.update(miou=self.miou, macc=self.macc, aacc=self.aacc)
        return metrics

    def report(self, classes=None) -> dict[str, Any]:
        """Per-class and overall metrics as a dict.

        Each class maps to ``{"iou", "accuracy", "precision", "recall", "f1-score", "support"}``:
        IoU and accuracy as in mmsegmentation (NaN when undefined); precision, recall, f1-score
        and support (ground-truth pixels) with sklearn's ``classification_report`` conventions
        (0 when undefined), which FiftyOne's Model Evaluation panel reads. The keys ``"mIoU"``,
        ``"mAcc"`` and ``"aAcc"`` hold the overall numbers.

        Args:
            classes: restrict the per-class entries to these names (default: all).
        """
        m = self._segmentation_metrics
        wanted = None if classes is None else {str(c) for c in classes}
        report: dict[str, Any] = {}
        for k, name in enumerate(self.class_names):
            if wanted is not None and name not in wanted:
                continue
            inter, gt_area, pred_area = (
                int(t[k]) for t in (m.intersection, m.gt_area, m.pred_area)
            )
            precision = inter / pred_area if pred_area else 0.0
            recall = inter / gt_area if gt_area else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            report[name] = {
                "iou": float(m.iou[k]),
                "accuracy": float(m.accuracy[k]),
                "precision": precision,
                "recall": recall,
                "f1-score": f1,
                "support": gt_area,
            }
        report.update({"mIoU": self.miou, "mAcc": self.macc, "aAcc": self.aacc})
        return report

    def print_report(self, classes=None, digits=2) -> None:
        """Prints per-class IoU and accuracy (in %, as mmsegmentation does) and the overall numbers."""
        print(format_report(self, classes=classes, digits=digits))

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        extra = {
            key: d.get(key)
            for key in (
                "unmatched_gt_classes",
                "unmatched_pred_classes",
                "unnamed_gt_values",
                "unnamed_pred_values",
                "unscored_classes",
            )
        }
        extra.update(num_resized=d.get("num_resized", 0), num_skipped=d.get("num_skipped", 0))
        return super()._from_dict(d, samples, config, eval_key, **extra, **kwargs)


def check_ground_truth_targets(samples: Any, gt_field: str, pred_fields: Sequence[str]) -> None:
    """Refuses to compare predictions that name their ids differently against unnamed ids.

    A ground truth without mask targets is read with the predictions' targets (see
    :func:`evaluate_miou`); when several predicted fields name their ids differently, each
    would read the same ground truth differently, so the comparison would be meaningless.

    Args:
        samples: a FiftyOne dataset or view.
        gt_field: the ground-truth Segmentation field.
        pred_fields: the predicted Segmentation fields.

    Raises:
        ValueError: one line saying which mask targets to set.
    """
    if samples.get_mask_targets(gt_field):
        return
    named = {}
    for field in pred_fields:
        targets = samples.get_mask_targets(field)
        if targets:
            named[field] = tuple(sorted((int(k), str(v)) for k, v in targets.items()))
    if len(set(named.values())) > 1:
        fields = ", ".join(repr(f) for f in named)
        raise ValueError(
            f"ground truth {gt_field!r} has no mask targets and the predictions {fields} name "
            f"their class ids differently; set dataset.mask_targets[{gt_field!r}] (id -> class "
            "name) so that classes are matched by name"
        )


def _evaluation_mask_targets(
    samples: Any, gt_field: str, pred_field: str, ignore_index: int, reduce_zero_label: bool
) -> tuple[dict[int, str] | None, dict[int, str] | None]:
    """The ``{id: name}`` of both fields in the evaluated id space (after ``reduce_zero_label``).

    The ground truth's ignored ids are dropped; when only one field has targets, both use them.
    """
    targets = []
    for field in (gt_field, pred_field):
        field_targets = samples.get_mask_targets(field) or None
        if field_targets and fof.is_rgb_mask_targets(field_targets):
            raise ValueError(
                f"Expected integer mask targets for {field!r}, but got RGB hex keys "
                "(RGB masks are not supported)"
            )
        if field_targets:
            field_targets = {int(k): str(v) for k, v in field_targets.items()}
        targets.append(field_targets)
    gt_targets, pred_targets = targets
    if gt_targets is not None:
        if reduce_zero_label:
            gt_targets = {k - 1: v for k, v in gt_targets.items() if k not in (0, ignore_index)}
        else:
            gt_targets = {k: v for k, v in gt_targets.items() if k != ignore_index}
    if gt_targets is None and pred_targets is not None:
        gt_targets = {k: v for k, v in pred_targets.items() if k != ignore_index}
    elif pred_targets is None and gt_targets is not None:
        pred_targets = dict(gt_targets)
    return gt_targets, pred_targets


def _unscored(names: ClassMatcher, ignore_index: int) -> list[int]:
    """The class a prediction of ``ignore_index`` maps to, unless the ground truth has it too."""
    k = names.pred_class_of(ignore_index)
    return [] if k is None or names.declares_gt(names[k]) else [k]


def _read_id_map(seg: fol.Segmentation | None, field: str) -> torch.Tensor | None:
    """(H, W) int64 ids of a Segmentation (in-database ``mask`` or ``mask_path``), or None."""
    if seg is None or not seg.has_mask:
        return None
    if seg.mask is None and not os.path.exists(seg.mask_path):
        return None  # a deleted or moved mask file: skipped (and counted) like a missing mask
    mask = np.asarray(seg.get_mask())
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(
            f"Expected the {field!r} masks to be (H, W) id maps, but got shape {mask.shape} "
            "(RGB masks are not supported)"
        )
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"Expected the {field!r} masks to hold integer ids, but got {mask.dtype}")
    ids = torch.from_numpy(mask.astype(np.int64))
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(f"Expected the {field!r} mask ids to be >= 0, but got {int(ids.min())}")
    return ids
