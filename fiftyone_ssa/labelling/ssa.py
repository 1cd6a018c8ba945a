"""SSA close-set over a FiftyOne collection: masks + class maps -> voted labels -> label fields.

The per-image algorithm is :func:`fiftyone_ssa.core.ssa.label_one_image`; this module checks
the request, builds the sources and turns each image's :class:`~fiftyone_ssa.core.ssa.ImageLabels`
into FiftyOne labels for the run loop to write.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import torch

from fiftyone_ssa import fields
from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.core.ssa import ImageLabels, label_one_image
from fiftyone_ssa.fields import DEFAULT_MASK_BRANCH, DEFAULT_SEMANTIC_BRANCH, check_label_field
from fiftyone_ssa.labelling import record
from fiftyone_ssa.labelling.backends import run_labelling
from fiftyone_ssa.labelling.loop import LabellingJob, check_run_options
from fiftyone_ssa.labelling.ray_backend import DEFAULT_BLOCK_SIZE, check_backend_options
from fiftyone_ssa.labelling.record import SampleSummary, SSARunSummary
from fiftyone_ssa.labelling.sources import (
    ClassMapSource,
    MaskSource,
    class_map_source,
    field_classes,
    field_name,
    guard,
    mask_generator_settings,
    mask_source,
)
from fiftyone_ssa.labels import (
    MAX_CLASS_ID,
    build_detections,
    class_map_to_numpy,
    float_or_none,
)

__all__ = [
    "DEFAULT_MASK_BRANCH",
    "DEFAULT_SEMANTIC_BRANCH",
    "SSARunSummary",
    "SampleSummary",
    "apply_ssa",
]

logger = logging.getLogger(__name__)

# The attributes of every mask detection SSA writes, besides ``label`` and ``confidence``.
MASK_ATTRIBUTES = {
    "class_proposals": (fo.ListField, {"subfield": fo.StringField}),
    "predicted_iou": fo.FloatField,
    "stability_score": fo.FloatField,
    "area": fo.IntField,
    "vote_margin": fo.FloatField,
    "branch_disagreement": fo.FloatField,
    "review_score": fo.FloatField,
}


def output_types(label_field: str, write_branch: bool = True) -> dict[str, type]:
    """The fields ``apply_ssa`` writes for ``label_field`` -> their label type (``str``: text)."""
    types = {label_field: fo.Segmentation, fields.masks_field(label_field): fo.Detections}
    if write_branch:
        types[fields.branch_field(label_field)] = fo.Segmentation
    types[fields.error_field(label_field)] = str
    return types


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
    record.check_target(samples, label_field)
    semantic_field, mask_field = field_name(semantic_branch), field_name(mask_branch)
    if semantic_field:
        check_label_field(samples, semantic_field, fo.Segmentation, "semantic branch")
        field_classes(samples, semantic_field)  # readable class ids
    if mask_field:
        check_label_field(samples, mask_field, fo.Detections, "mask branch")
    outputs = output_types(label_field, write_branch)
    clash = {semantic_field, mask_field}.intersection(outputs)
    if clash:
        raise ValueError(
            f"output field {clash.pop()!r} is also an input; choose another label_field"
        )
    record.check_outputs_free(samples, label_field, outputs, run_key, overwrite, skip_existing)


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
    classes: Sequence[str] | Mapping[int, str] | None = None,
    skip_failures: bool = True,
    output_dir: str | None = None,
    progress: bool | Callable | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    resume: bool = True,
    discard_reviews: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    gpus_per_worker: float | None = None,
    ray_block_size: int = DEFAULT_BLOCK_SIZE,
    **mask_generator_options,
) -> SSARunSummary:
    """Runs SSA close-set over a collection and writes its label fields.

    For every sample: the mask branch gives N masks, the semantic branch a class map S; each
    mask takes the class most of its pixels have in S (ties: lowest id), and the masks are
    painted onto a copy of S largest first so smaller masks win overlaps.

    Writes ``<label_field>`` (``fo.Segmentation``, mask targets from the branch's classes),
    ``<label_field>_masks`` (``fo.Detections``, one per mask: ``label``, ``confidence`` = vote
    share, ``class_proposals``, ``predicted_iou``, ``stability_score``, ``area``, the doubt
    signals ``vote_margin`` and ``branch_disagreement`` and their ``review_score``; README,
    "Reviewing labels") and, unless
    ``write_branch=False``, ``<label_field>_branch`` (the semantic branch alone). Each sample is
    written in one update, so an interrupted run leaves samples fully labelled or untouched,
    and ``<label_field>.run_key`` records the run that wrote it: re-running the same call
    labels only what is missing. Under ``torchrun`` each rank labels a disjoint shard on its
    own GPU (see ``fiftyone_ssa.labelling.distributed``) and rank 0 returns the merged summary;
    with ``backend="ray"`` Ray actors label small blocks handed out as they become free (see
    ``fiftyone_ssa.labelling.ray_backend``).

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
        classes: class names for an open-vocabulary semantic branch (CLIPSeg: ids 0..N-1;
            SAM 3: ids 1..N, 0 the background no concept covers), or for SAM 3 a mapping
            id -> name such as a Segmentation field's ``dataset.mask_targets[field]`` (ids
            kept; id 0, if there, names the background).
        skip_failures: record a failing sample in ``<label_field>_error`` and go on (labels
            an earlier run gave it stay, their ``run_key`` tells); False raises at the first
            failure.
        output_dir: where large instance masks are written (default: FiftyOne's dataset
            directory).
        progress: FiftyOne's progress argument (True/False/None or a callable).
        progress_callback: called with (done, total) after each sample (used by operators).
        resume: skip the samples an identical earlier run (same run key: label field,
            branches and their options) already labelled, e.g. after a crash; False labels
            them again. Either way, samples whose masks a person reviewed
            (:func:`~fiftyone_ssa.labelling.apply_review.apply_review`) are kept as reviewed,
            also with ``overwrite=True``.
        discard_reviews: relabel reviewed samples too, losing their corrections.
        backend: ``"local"`` (this process; one rank of a torchrun launch) or ``"ray"``
            (Ray actors, models loaded once per actor; needs ``pip install
            "fiftyone-ssa[ray]"``). Branch specs, the callables included, must be picklable
            for Ray.
        ray_address: Ray only: None starts Ray on this machine (unless this process is
            already connected), ``"auto"`` joins the cluster of ``ray start``, ``"HOST:PORT"``
            another one.
        ray_workers: Ray only: number of actors (default: one per ``gpus_per_worker`` GPUs of
            the cluster; one per CPU on a cluster without GPUs).
        gpus_per_worker: Ray only: GPUs per actor, fractions allowed (default: 1 on a
            cluster with GPUs, else 0).
        ray_block_size: Ray only: samples per block handed to an actor.
        **mask_generator_options: SAM automatic mask generation settings overriding SSA's
            defaults (points_per_side=64, pred_iou_thresh=0.86, ...).

    Returns:
        A summary of the run.
    """
    ray = backend == "ray"
    check_backend_options(backend, ray_address, ray_workers, gpus_per_worker, ray_block_size)
    # Under Ray the device is checked on the actors (their machines may have GPUs this lacks).
    check_run_options(batch_size, top_k, num_workers, None if ray else device)
    if isinstance(classes, str):
        raise ValueError(f"Expected `classes` to be a list of class names, but got {classes!r}")
    if classes is not None:
        classes = (
            {int(k): str(v) for k, v in classes.items()}
            if isinstance(classes, Mapping)
            else list(classes)
        )
    mask_generator_options = mask_generator_settings(mask_branch, mask_generator_options)
    config = {
        "kind": "ssa",
        "label_field": label_field,
        "semantic_branch": semantic_branch,
        "mask_branch": mask_branch,
        # Database documents need string keys.
        "classes": {str(k): v for k, v in classes.items()}
        if isinstance(classes, dict)
        else classes,
        "top_k": top_k,
        "write_branch": write_branch,
        "mask_options": mask_generator_options,
    }
    run_key = record.make_run_key(config)
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
    build_job = functools.partial(
        build_ssa_job,
        label_field=label_field,
        semantic_branch=semantic_branch,
        mask_branch=mask_branch,
        classes=classes,
        top_k=top_k,
        write_branch=write_branch,
        mask_root=record.mask_directory(samples, output_dir),
        mask_generator_options=mask_generator_options,
    )
    ray_options = {
        "ray_address": ray_address,
        "ray_workers": ray_workers,
        "gpus_per_worker": gpus_per_worker,
        "block_size": ray_block_size,
        "review_field": fields.masks_field(label_field),
    }
    return run_labelling(
        samples,
        build_job,
        run_key,
        config,
        device=device,
        backend=backend,
        ray_options=ray_options,
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        resume=resume,
        skip_failures=skip_failures,
        progress=progress,
        progress_callback=progress_callback,
        discard_reviews=discard_reviews,
    )


def build_ssa_job(
    samples,
    device: Any,
    label_field: str,
    semantic_branch: Any,
    mask_branch: Any,
    classes: list[str] | dict[int, str] | None,
    top_k: int,
    write_branch: bool,
    mask_root: str,
    mask_generator_options: dict,
) -> SSAJob:
    """The :class:`SSAJob` of a validated request, its branches loaded on ``device`` (once per
    process: the run's own, or each Ray actor)."""
    semantic = class_map_source(semantic_branch, samples, device, classes)
    masks = mask_source(mask_branch, device, **mask_generator_options)
    # Where voting runs: the device asked for, else the models' (a field has none).
    work_device = torch.device(device or semantic.device or masks.device or "cpu")
    return SSAJob(label_field, semantic, masks, work_device, top_k, write_branch, mask_root)


class SSAJob(LabellingJob):
    """SSA close-set as a :class:`LabellingJob`: class maps, masks, votes, painted maps.

    Args:
        label_field: the output field.
        semantic: where the class maps come from.
        masks: where the masks come from.
        device: where voting and painting run.
        top_k: proposals per mask.
        write_branch: also write ``<label_field>_branch``.
        mask_root: where large instance masks are written.
    """

    def __init__(
        self,
        label_field: str,
        semantic: ClassMapSource,
        masks: MaskSource,
        device: torch.device,
        top_k: int,
        write_branch: bool,
        mask_root: str,
    ):
        self.label_field = label_field
        self.review_field = fields.masks_field(label_field)
        self.semantic = semantic
        self.masks = masks
        self.device = device
        self.top_k = top_k
        self.write_branch = write_branch
        self.mask_root = mask_root
        self.input_fields = [source.field for source in (semantic, masks) if source.field]
        self.needs_image = semantic.needs_image or masks.needs_image
        self.seen_classes: dict[int, str] = {}
        # A callable branch learns its classes while it runs: finish() sets them then.
        self.classes_known = bool(semantic.classes)

    def _segmentation_fields(self) -> list[str]:
        types = output_types(self.label_field, self.write_branch)
        return [name for name, kind in types.items() if kind is fo.Segmentation]

    def output_schema(self) -> dict[str, tuple[type, dict]]:
        lf = self.label_field
        schema = record.label_schema(
            lf, fo.Segmentation, {record.RUN_KEY_ATTRIBUTE: fo.StringField}
        )
        schema.update(record.label_schema(f"{lf}_masks", fo.Detections, MASK_ATTRIBUTES))
        schema.update(record.run_labels_schema(f"{lf}_masks"))
        if self.write_branch:
            schema.update(record.label_schema(f"{lf}_branch", fo.Segmentation, {}))
        schema[fields.error_field(lf)] = (fo.StringField, {})
        return schema

    def unwritten_outputs(self) -> dict[str, type]:
        # A relabelled sample's copy of a reviewed map describes labels that are gone.
        unwritten = {fields.before_review_field(self.label_field): fo.Segmentation}
        if not self.write_branch:
            unwritten[fields.branch_field(self.label_field)] = fo.Segmentation
        return unwritten

    def prepare(self, dataset: fo.Dataset, others_remain: bool) -> None:
        if self.classes_known:
            targets = dict(self.semantic.classes)
            self._set_mask_targets(dataset, targets, others_remain, check=True)

    def label_batch(self, batch, images, skip_failures):
        return _label_batch(
            batch, images, self.semantic, self.masks, self.device, self.top_k, skip_failures
        )

    def sample_values(self, sample_id, outcome: SampleOutcome, run_key):
        classes = self.semantic.classes
        mask_set = outcome.mask_set
        vote = outcome.labels.vote
        labels = vote.labels.cpu().tolist()
        painted_ids = outcome.labels.painted.unique().cpu().tolist()
        for c in set(labels) | set(painted_ids):
            self.seen_classes.setdefault(int(c), classes.get(int(c), str(int(c))))
        confidence = vote.confidence.cpu().tolist()
        areas = vote.areas.cpu().tolist()
        ious = mask_set.predicted_iou.cpu().tolist()
        stabilities = mask_set.stability_score.cpu().tolist()
        margins = outcome.labels.margin.cpu().tolist()
        disagreement = outcome.labels.branch_disagreement.cpu().tolist()
        scores = (
            outcome.labels.review_score(mask_set.predicted_iou, mask_set.stability_score)
            .cpu()
            .tolist()
        )
        attributes = [
            {
                "confidence": confidence[i],
                "class_proposals": [classes.get(c, str(c)) for c in outcome.labels.proposals[i]],
                "predicted_iou": float_or_none(ious[i]),
                "stability_score": float_or_none(stabilities[i]),
                "area": int(areas[i]),
                "vote_margin": margins[i],
                "branch_disagreement": float_or_none(disagreement[i]),
                "review_score": float_or_none(scores[i]),
            }
            for i in range(len(labels))
        ]
        lf = self.label_field
        mask_dir = record.sample_mask_directory(
            self.mask_root, fields.masks_field(lf), sample_id, run_key, sum(areas)
        )
        names = [classes.get(c, str(c)) for c in labels]
        painted = class_map_to_numpy(outcome.labels.painted)
        values = {
            lf: fo.Segmentation(mask=painted, **{record.RUN_KEY_ATTRIBUTE: run_key}),
            fields.masks_field(lf): record.record_run_labels(
                build_detections(mask_set.masks, names, attributes, mask_dir, outcome.carried)
            ),
            fields.error_field(lf): None,
        }
        if self.write_branch:
            values[fields.branch_field(lf)] = fo.Segmentation(
                mask=class_map_to_numpy(outcome.class_map)
            )
        return (
            values,
            len(mask_set),
            sorted({classes.get(int(c), str(int(c))) for c in painted_ids}),
        )

    def shared_state(self) -> dict[int, str]:
        return self.seen_classes

    def finish(
        self, dataset: fo.Dataset, states: list[dict[int, str]], others_remain: bool
    ) -> None:
        if self.classes_known:
            return
        seen: dict[int, str] = {}
        for state in states:
            seen.update(state)
        if seen:
            self._set_mask_targets(dataset, seen, others_remain)

    def _set_mask_targets(
        self,
        dataset: fo.Dataset,
        targets: dict[int, str],
        others_remain: bool,
        check: bool = False,
    ) -> None:
        """Sets the painted fields' mask targets, kept valid for other runs' remaining labels.

        Args:
            dataset: the dataset.
            targets: class id -> name of this run.
            others_remain: labels of other runs stay in these fields.
            check: raise ValueError (before anything is written) when other runs' labels
                remain and read some id as another class; else this run's names win.
        """
        for name in self._segmentation_fields():
            existing = dataset.mask_targets.get(name) or {}
            merged = targets
            if others_remain:
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


def _label_batch(batch, images, semantic, masks, device, top_k, skip_failures):
    """SSA for a batch of samples; returns (outcome or exception, seconds) per sample."""
    start = time.perf_counter()
    try:
        class_maps = semantic.class_maps(batch, images, device)
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


@dataclass
class SampleOutcome:
    """What SSA decided for one sample, with the inputs its labels are written from.

    Attributes:
        labels: the votes, painted map and proposals.
        mask_set: the N masks and their scores.
        class_map: (H, W) the semantic branch's map.
        carried: attributes carried over from the masks' source detections, or None.
    """

    labels: ImageLabels
    mask_set: MaskSet
    class_map: torch.Tensor
    carried: list[dict] | None


def _label_sample(sample, image, class_map, semantic, masks, device, top_k) -> SampleOutcome:
    """SSA for one sample; ``image`` is the RGB array, or only its (H, W) when no source needs
    the pixels."""
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
    mask_set = masks.masks(sample, image, size, device)
    num_classes = max(top + 1, max(semantic.classes, default=-1) + 1)
    labels = label_one_image(class_map, mask_set.masks, num_classes, top_k)
    return SampleOutcome(labels, mask_set, class_map, masks.carried(sample))
