"""SSA close-set over a FiftyOne collection: masks + semantic branch + voting -> label fields."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.core.fields as fof
import numpy as np
import torch

from fiftyone_ssa import distributed, runs
from fiftyone_ssa.batching import check_label_field, guard
from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.core.rle_voting import vote_and_paint_masks
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes
from fiftyone_ssa.labels import (
    MAX_CLASS_ID,
    build_detections,
    carried_attributes,
    class_map_to_numpy,
    detections_to_mask_set,
    float_or_none,
    segmentation_to_tensor,
)
from fiftyone_ssa.models.masks.branches import FieldMaskBranch, MaskBranch
from fiftyone_ssa.models.registry import create_branch, field_name
from fiftyone_ssa.models.semantic.branches import FieldSemanticBranch, SemanticBranch
from fiftyone_ssa.run_loop import LabellingJob, check_run_options, execute_labelling_run
from fiftyone_ssa.runs import SampleSummary, SSARunSummary

__all__ = ["SSARunSummary", "SampleSummary", "apply_ssa", "label_one_image"]

logger = logging.getLogger(__name__)

DEFAULT_SEMANTIC_BRANCH = "segformer-b5-ade20k"
DEFAULT_MASK_BRANCH = "sam-vit-h"

# The attributes of every mask detection SSA writes, besides ``label`` and ``confidence``.
MASK_ATTRIBUTES = {
    "class_proposals": (fo.ListField, {"subfield": fo.StringField}),
    "predicted_iou": fo.FloatField,
    "stability_score": fo.FloatField,
    "area": fo.IntField,
}


def output_types(label_field: str, write_branch: bool = True) -> dict[str, type]:
    """The fields ``apply_ssa`` writes for ``label_field`` -> their label type (``str``: text)."""
    types = {label_field: fo.Segmentation, f"{label_field}_masks": fo.Detections}
    if write_branch:
        types[f"{label_field}_branch"] = fo.Segmentation
    types[runs.error_field(label_field)] = str
    return types


def sam_options(mask_branch, options: dict) -> dict:
    """The mask generator settings that apply: none when the masks come from a field.

    Settings given with a ``field:`` branch would change nothing but the run key (a rerun with
    other, equally unused settings would relabel every sample); they are dropped with a warning.
    """
    if options and field_name(mask_branch):
        logger.warning(
            "ignoring mask generator settings %s: the masks come from field %r",
            sorted(options),
            field_name(mask_branch),
        )
        return {}
    return options


def _field_classes(samples, name: str) -> dict[int, str]:
    """A field branch's classes: its mask targets (else the default ones), id -> name."""
    dataset = samples._dataset
    targets = dataset.mask_targets.get(name) or dataset.default_mask_targets or {}
    if targets and fof.is_rgb_mask_targets(targets):
        raise ValueError(
            f"field {name!r} has RGB mask targets; the semantic branch needs integer class ids"
        )
    return {int(k): str(v) for k, v in targets.items()}


def validate_ssa_request(
    samples,
    label_field: str,
    semantic_branch: Any,
    mask_branch: Any,
    write_branch: bool,
    run_key: str,
    overwrite: bool,
    skip_existing: bool,
) -> None:
    """Checks the request before any model loads; raises ValueError with one line.

    Args:
        samples: the collection to label.
        label_field: the output field.
        semantic_branch: the semantic branch's spec (see :func:`apply_ssa`).
        mask_branch: the mask branch's spec.
        write_branch: whether ``<label_field>_branch`` is written.
        run_key: the run's key.
        overwrite: see :func:`apply_ssa`.
        skip_existing: see :func:`apply_ssa`.
    """
    runs.check_target(samples, label_field)
    semantic_field, mask_field = field_name(semantic_branch), field_name(mask_branch)
    if semantic_field:
        check_label_field(samples, semantic_field, fo.Segmentation, "semantic branch")
        _field_classes(samples, semantic_field)  # readable class ids
    if mask_field:
        check_label_field(samples, mask_field, fo.Detections, "mask branch")
    outputs = output_types(label_field, write_branch)
    clash = {semantic_field, mask_field}.intersection(outputs)
    if clash:
        raise ValueError(
            f"output field {clash.pop()!r} is also an input; choose another label_field"
        )
    runs.check_outputs_free(samples, label_field, outputs, run_key, overwrite, skip_existing)


def label_one_image(
    image: np.ndarray | None,
    class_map: torch.Tensor,
    mask_set: MaskSet,
    classes: dict[int, str],
    top_k: int = 3,
) -> dict[str, Any]:
    """SSA on one image, from its branch class map and masks to the painted map.

    Args:
        image: unused here (kept for symmetry with the engine); may be None.
        class_map: (H, W) int64 class ids of the semantic branch.
        mask_set: the image's N masks on the same device.
        classes: class id -> name.
        top_k: proposals per mask.

    Returns:
        ``painted`` (H, W) int64, ``labels`` (N,) ids, ``vote`` the VoteResult,
        ``proposals`` N lists of ids.
    """
    num_classes = max(
        int(class_map.max()) + 1 if class_map.numel() else 1, max(classes, default=-1) + 1
    )
    if mask_set.masks.device.type == "cpu":
        # Same results; through the masks' runs it is about 13x faster on the CPU
        # (benchmarks/RESULTS.md, 1500x2250 with 100 masks).
        vote, painted = vote_and_paint_masks(mask_set.masks, class_map, num_classes)
    else:
        vote = vote_mask_classes(mask_set.masks, class_map, num_classes)
        painted = paint_masks(class_map, mask_set.masks, vote.labels, painting_order(vote.areas))
    return {
        "painted": painted,
        "labels": vote.labels,
        "vote": vote,
        "proposals": vote.proposals(top_k),
    }


def apply_ssa(
    samples,
    label_field: str = "ssa",
    semantic_branch: Any = DEFAULT_SEMANTIC_BRANCH,
    mask_branch: Any = DEFAULT_MASK_BRANCH,
    device: str | None = None,
    batch_size: int = 1,
    num_workers: int = 2,
    skip_existing: bool = False,
    overwrite: bool = False,
    write_branch: bool = True,
    top_k: int = 3,
    classes: list[str] | None = None,
    skip_failures: bool = True,
    output_dir: str | None = None,
    progress: bool | Callable | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    resume: bool = True,
    **mask_generator_options,
) -> SSARunSummary:
    """Runs SSA close-set over a collection and writes its label fields.

    For every sample: the mask branch gives N masks, the semantic branch a class map S; each
    mask takes the class most of its pixels have in S (ties: lowest id), and the masks are
    painted onto a copy of S largest first so smaller masks win overlaps.

    Writes ``<label_field>`` (``fo.Segmentation``, mask targets from the branch's classes),
    ``<label_field>_masks`` (``fo.Detections``, one per mask: ``label``, ``confidence`` = vote
    share, ``class_proposals``, ``predicted_iou``, ``stability_score``, ``area``) and, unless
    ``write_branch=False``, ``<label_field>_branch`` (the semantic branch alone). Each sample is
    written in one update, so an interrupted run leaves samples fully labelled or untouched,
    and ``<label_field>.run_key`` records the run that wrote it: re-running the same call
    labels only what is missing. Under ``torchrun`` each rank labels a disjoint shard on its
    own GPU (see ``fiftyone_ssa.distributed``) and rank 0 returns the merged summary.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the output field name.
        semantic_branch: preset, Hugging Face id, local directory, ``field:<name>`` (an existing
            Segmentation field), a callable ``image -> (class map, id -> name)`` or a
            ``SemanticBranch``.
        mask_branch: ``sam-vit-b|l|h``, a SAM checkpoint or saved directory, ``field:<name>``
            (an existing Detections field with instance masks) or a ``MaskBranch``.
        device: torch device (default: CUDA when available).
        batch_size: images per semantic-branch call.
        num_workers: threads decoding images ahead of the models (0: none, decoded in turn).
        skip_existing: label only samples whose ``label_field`` is empty.
        overwrite: replace the labels of other runs in the output fields.
        write_branch: also write ``<label_field>_branch``; when False, samples relabelled
            over an earlier run lose the branch map that run wrote.
        top_k: class proposals per mask.
        classes: class names for an open-vocabulary (CLIPSeg) semantic branch.
        skip_failures: record a failing sample in ``<label_field>_error`` and go on (labels
            an earlier run gave it stay, their ``run_key`` tells); False raises at the first
            failure.
        output_dir: where large instance masks are written (default: FiftyOne's dataset
            directory).
        progress: FiftyOne's progress argument (True/False/None or a callable).
        progress_callback: called with (done, total) after each sample (used by operators).
        resume: skip the samples an identical earlier run (same run key: label field,
            branches and their options) already labelled, e.g. after a crash; False labels
            them again.
        **mask_generator_options: SAM automatic mask generation settings overriding SSA's
            defaults (points_per_side=64, pred_iou_thresh=0.86, ...).

    Returns:
        A summary of the run.
    """
    check_run_options(batch_size, top_k, num_workers, device)
    if isinstance(classes, str):
        raise ValueError(f"Expected `classes` to be a list of class names, but got {classes!r}")
    mask_generator_options = sam_options(mask_branch, mask_generator_options)
    config = {
        "kind": "ssa",
        "label_field": label_field,
        "semantic_branch": semantic_branch,
        "mask_branch": mask_branch,
        "classes": classes,
        "top_k": top_k,
        "write_branch": write_branch,
        "mask_options": mask_generator_options,
    }
    run_key = runs.make_run_key(config)
    validate_ssa_request(
        samples,
        label_field,
        semantic_branch,
        mask_branch,
        write_branch,
        run_key,
        overwrite,
        skip_existing,
    )
    device = distributed.run_device(device)
    branch_kwargs = {"device": device}
    if classes is not None:
        branch_kwargs["classes"] = list(classes)
    semantic = create_branch(semantic_branch, kind="semantic", **branch_kwargs)
    masks = create_branch(mask_branch, kind="mask", device=device, **mask_generator_options)
    if isinstance(semantic, FieldSemanticBranch):
        semantic.classes = _field_classes(samples, semantic.field)
    work_device = torch.device(device) if device else semantic.device
    if isinstance(semantic, FieldSemanticBranch) and not isinstance(masks, FieldMaskBranch):
        work_device = masks.device
    mask_root = runs.mask_directory(samples, output_dir)
    job = SSAJob(label_field, semantic, masks, work_device, top_k, write_branch, mask_root)
    return execute_labelling_run(
        samples,
        job,
        run_key,
        config,
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        resume=resume,
        skip_failures=skip_failures,
        progress=progress,
        progress_callback=progress_callback,
    )


class SSAJob(LabellingJob):
    """SSA close-set as a :class:`LabellingJob`: class maps, masks, votes, painted maps."""

    def __init__(
        self,
        label_field: str,
        semantic: SemanticBranch,
        masks: MaskBranch,
        device: torch.device,
        top_k: int,
        write_branch: bool,
        mask_root: str,
    ):
        self.label_field = label_field
        self.semantic = semantic
        self.masks = masks
        self.device = device
        self.top_k = top_k
        self.write_branch = write_branch
        self.mask_root = mask_root
        self.input_fields = [
            f for f in (getattr(semantic, "field", None), getattr(masks, "field", None)) if f
        ]
        self.needs_image = not (
            isinstance(semantic, FieldSemanticBranch) and isinstance(masks, FieldMaskBranch)
        )
        self.seen_classes: dict[int, str] = {}
        self.others_remain = False
        self.classes_known = False

    def _segmentation_fields(self) -> list[str]:
        types = output_types(self.label_field, self.write_branch)
        return [name for name, kind in types.items() if kind is fo.Segmentation]

    def output_schema(self) -> dict[str, tuple[type, dict]]:
        lf = self.label_field
        schema = runs.label_schema(lf, fo.Segmentation, {runs.RUN_KEY_ATTRIBUTE: fo.StringField})
        schema.update(runs.label_schema(f"{lf}_masks", fo.Detections, MASK_ATTRIBUTES))
        if self.write_branch:
            schema.update(runs.label_schema(f"{lf}_branch", fo.Segmentation, {}))
        schema[runs.error_field(lf)] = (fo.StringField, {})
        return schema

    def unwritten_outputs(self) -> dict[str, type]:
        return {} if self.write_branch else {f"{self.label_field}_branch": fo.Segmentation}

    def prepare(self, dataset: fo.Dataset, others_remain: bool) -> None:
        self.others_remain = others_remain
        # A callable branch learns its classes while it runs: finish() sets them then.
        self.classes_known = bool(self.semantic.classes)
        if self.classes_known:
            self._set_mask_targets(dataset, dict(self.semantic.classes), check=True)

    def label_batch(self, batch, images, skip_failures):
        return _label_batch(
            batch, images, self.semantic, self.masks, self.device, self.top_k, skip_failures
        )

    def sample_values(self, sample_id, outcome, run_key):
        classes = self.semantic.classes
        mask_set: MaskSet = outcome["mask_set"]
        vote = outcome["vote"]
        labels = vote.labels.cpu().tolist()
        painted_ids = outcome["painted"].unique().cpu().tolist()
        for c in set(labels) | set(painted_ids):
            self.seen_classes.setdefault(int(c), classes.get(int(c), str(int(c))))
        confidence = vote.confidence.cpu().tolist()
        areas = vote.areas.cpu().tolist()
        ious = mask_set.predicted_iou.cpu().tolist()
        stabilities = mask_set.stability_score.cpu().tolist()
        attributes = [
            {
                "confidence": confidence[i],
                "class_proposals": [classes.get(c, str(c)) for c in outcome["proposals"][i]],
                "predicted_iou": float_or_none(ious[i]),
                "stability_score": float_or_none(stabilities[i]),
                "area": int(areas[i]),
            }
            for i in range(len(labels))
        ]
        lf = self.label_field
        mask_dir = runs.sample_mask_directory(
            self.mask_root, f"{lf}_masks", sample_id, run_key, sum(areas)
        )
        names = [classes.get(c, str(c)) for c in labels]
        painted = class_map_to_numpy(outcome["painted"])
        values = {
            lf: fo.Segmentation(mask=painted, **{runs.RUN_KEY_ATTRIBUTE: run_key}),
            f"{lf}_masks": build_detections(
                mask_set.masks, names, attributes, mask_dir, outcome["carried"]
            ),
            runs.error_field(lf): None,
        }
        if self.write_branch:
            values[f"{lf}_branch"] = fo.Segmentation(mask=class_map_to_numpy(outcome["class_map"]))
        return (
            values,
            len(mask_set),
            sorted({classes.get(int(c), str(int(c))) for c in painted_ids}),
        )

    def shared_state(self) -> dict[int, str]:
        return self.seen_classes

    def finish(self, dataset: fo.Dataset, states: list[dict[int, str]]) -> None:
        if self.classes_known:
            return
        seen: dict[int, str] = {}
        for state in states:
            seen.update(state)
        if seen:
            self._set_mask_targets(dataset, seen)

    def _set_mask_targets(
        self, dataset: fo.Dataset, targets: dict[int, str], check: bool = False
    ) -> None:
        """Sets the painted fields' mask targets, kept valid for other runs' remaining labels.

        Args:
            dataset: the dataset.
            targets: class id -> name of this run.
            check: raise ValueError (before anything is written) when other runs' labels
                remain and read some id as another class; else this run's names win.
        """
        for name in self._segmentation_fields():
            existing = dataset.mask_targets.get(name) or {}
            merged = targets
            if self.others_remain:
                clash = sorted(
                    i for i in targets.keys() & existing.keys() if targets[i] != existing[i]
                )
                if clash and check:
                    i = clash[0]
                    raise ValueError(
                        f"the labels other runs left in {name!r} read class id {i} as "
                        f"{existing[i]!r}, this run as {targets[i]!r}; label into another "
                        "label_field, or relabel every sample with overwrite=True"
                    )
                merged = {**existing, **targets}
            dataset.mask_targets[name] = merged
        dataset.save()


def _class_maps(batch, images, semantic, device) -> list:
    """The branch class map of every readable image (an exception where there is none)."""
    maps: list = [image if isinstance(image, Exception) else None for image in images]
    if isinstance(semantic, FieldSemanticBranch):
        for i, sample in enumerate(batch):
            if maps[i] is None:
                label = sample[semantic.field]
                maps[i] = (
                    ValueError(f"sample has no {semantic.field!r} label")
                    if label is None
                    else guard(segmentation_to_tensor, label, device)
                )
        return maps
    live = [i for i in range(len(batch)) if maps[i] is None]
    if live:  # one batched call for the readable images
        for i, class_map in zip(live, semantic.predict([images[i] for i in live])):
            maps[i] = class_map.to(device)
    return maps


def _label_batch(batch, images, semantic, masks, device, top_k, skip_failures):
    """SSA for a batch of samples; returns (outcome or exception, seconds) per sample."""
    start = time.perf_counter()
    try:
        class_maps = _class_maps(batch, images, semantic, device)
    except Exception as err:
        if not skip_failures:
            raise
        if len(batch) == 1:
            return [(err, time.perf_counter() - start)]
        # Retry one by one so a single bad image does not fail its batch-mates.
        return [
            _label_batch([s], [im], semantic, masks, device, top_k, skip_failures)[0]
            for s, im in zip(batch, images)
        ]
    shared_seconds = (time.perf_counter() - start) / len(batch)
    results = []
    for sample, image, class_map in zip(batch, images, class_maps):
        t0 = time.perf_counter()
        outcome = class_map
        if not isinstance(class_map, Exception):
            outcome = guard(_label_sample, sample, image, class_map, semantic, masks, device, top_k)
        results.append((outcome, shared_seconds + time.perf_counter() - t0))
    return results


def sample_mask_sources(sample, masks: MaskBranch) -> list[dict] | None:
    """The attributes of the detections a field branch's masks come from (SA-1B ids, prompts,
    ...; see ``labels.carried_attributes``), in :func:`sample_masks`' order; None for a model
    branch."""
    if isinstance(masks, FieldMaskBranch):
        return carried_attributes(sample[masks.field])
    return None


def sample_masks(
    sample, image: np.ndarray | None, size: tuple[int, int], masks: MaskBranch, device
) -> MaskSet:
    """A sample's masks on ``device``: from its Detections field or from the mask branch.

    Args:
        sample: the sample (with the mask branch's field, if any).
        image: (H, W, 3) uint8 RGB; may be None for a field branch.
        size: the image's (H, W).
        masks: the mask branch.
        device: where the masks go.

    Returns:
        N masks (N, H, W) bool with their scores.

    Raises:
        ValueError: the mask branch produced masks of another size.
    """
    if isinstance(masks, FieldMaskBranch):
        return detections_to_mask_set(sample[masks.field], size, device)
    mask_set = masks.generate(image)
    if tuple(mask_set.masks.shape[1:]) != tuple(size):
        raise ValueError(
            f"mask branch returned {tuple(mask_set.masks.shape[1:])} masks for a {size} image"
        )
    return MaskSet(
        mask_set.masks.to(device),
        mask_set.predicted_iou.to(device),
        mask_set.stability_score.to(device),
    )


def _label_sample(sample, image, class_map, semantic, masks, device, top_k):
    """SSA for one sample; ``image`` is the RGB array, or only its (H, W) for field branches."""
    size = tuple(class_map.shape)
    image_size = tuple(image) if isinstance(image, tuple) else tuple(image.shape[:2])
    if image_size != size:
        raise ValueError(
            f"semantic map is {size[1]}x{size[0]} but the image is {image_size[1]}x{image_size[0]}"
        )
    top = int(class_map.max()) if class_map.numel() else 0
    if top > MAX_CLASS_ID:  # before voting: the votes would take N x (top + 1) counts
        raise ValueError(
            f"the semantic map holds class id {top}; a Segmentation stores ids up to {MAX_CLASS_ID}"
        )
    image = None if isinstance(image, tuple) else image
    mask_set = sample_masks(sample, image, size, masks, device)
    result = label_one_image(image, class_map, mask_set, semantic.classes, top_k)
    result["mask_set"] = mask_set
    result["class_map"] = class_map
    result["carried"] = sample_mask_sources(sample, masks)
    return result
