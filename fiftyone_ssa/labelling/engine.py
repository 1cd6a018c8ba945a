"""SSA-engine over a FiftyOne collection: an open-vocabulary name and top-k proposals per mask.

The models and the batched labelling core (:class:`EngineModels`, :func:`label_masks`) live in
``fiftyone_ssa.models.engine.models`` (no FiftyOne); :func:`apply_ssa_engine` feeds them a
FiftyOne view (masks from an existing field or SAM) and writes the label fields.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import numpy as np
import torch

from fiftyone_ssa.core.doubt import ENGINE_WEIGHTS, engine_doubts, review_score
from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.core.vocabulary import check_vocabulary
from fiftyone_ssa.core.voting import paint_masks, painting_order
from fiftyone_ssa.fields import (
    DEFAULT_MASK_BRANCH,
    DEFAULT_SPACY_MODEL,
    before_review_field,
    check_label_field,
    error_field,
    segmentation_field,
)
from fiftyone_ssa.labelling import distributed, record
from fiftyone_ssa.labelling.backends import run_labelling
from fiftyone_ssa.labelling.loop import LabellingJob, check_run_options
from fiftyone_ssa.labelling.ray_backend import DEFAULT_BLOCK_SIZE, check_backend_options
from fiftyone_ssa.labelling.record import SSARunSummary
from fiftyone_ssa.labelling.sources import (
    MaskSource,
    field_name,
    guard,
    mask_generator_settings,
    mask_source,
)
from fiftyone_ssa.labels import build_detections, class_map_to_numpy, float_or_none
from fiftyone_ssa.models.engine.models import (
    CAPTION_CROP_SCALE,
    CLIP_CROP_SCALE,
    CLIPSEG_CROP_SCALE,
    DECIDERS,
    DEFAULT_ENGINE_MODELS,
    LIGHT_ENGINE_MODELS,
    EngineModels,
    MaskLabels,
    engine_mask_generator_defaults,
    label_masks,
)

__all__ = [
    "CAPTION_CROP_SCALE",
    "CLIPSEG_CROP_SCALE",
    "CLIP_CROP_SCALE",
    "DEFAULT_ENGINE_MODELS",
    "LIGHT_ENGINE_MODELS",
    "EngineJob",
    "EngineModels",
    "MaskLabels",
    "apply_ssa_engine",
    "engine_mask_generator_defaults",
    "label_masks",
]

logger = logging.getLogger(__name__)


def engine_output_types(label_field: str, write_segmentation: bool = False) -> dict[str, type]:
    """The fields ``apply_ssa_engine`` writes -> their label type (``str``: text)."""
    types = {label_field: fo.Detections, error_field(label_field): str}
    if write_segmentation:
        types[segmentation_field(label_field)] = fo.Segmentation
    return types


def validate_engine_request(
    samples,
    label_field: str,
    mask_branch: Any,
    write_segmentation: bool,
    vocabulary_mode: str,
    run_key: str,
    overwrite: bool,
    skip_existing: bool,
    many_workers: bool = False,
) -> None:
    """Checks the request before any model loads; one-line ValueErrors.

    Args:
        samples: the collection to label.
        label_field: the output field.
        mask_branch: the mask branch's spec (see :func:`apply_ssa_engine`).
        write_segmentation: whether ``<label_field>_seg`` is written.
        vocabulary_mode: ``"add"`` or ``"restrict"``.
        run_key: the run's key.
        overwrite: see :func:`apply_ssa_engine`.
        skip_existing: see :func:`apply_ssa_engine`.
        many_workers: the run is shared by processes (Ray); torchrun ranks are found here.
    """
    record.check_target(samples, label_field)
    mask_field = field_name(mask_branch)
    if mask_field:
        check_label_field(samples, mask_field, fo.Detections, "mask branch")
    outputs = engine_output_types(label_field, write_segmentation)
    if mask_field in outputs:
        raise ValueError(
            f"output field {mask_field!r} is also the mask branch's input; choose "
            "another label_field"
        )
    many_workers = many_workers or distributed.current_ranks().is_distributed
    if write_segmentation and vocabulary_mode != "restrict" and many_workers:
        raise ValueError(
            "write_segmentation under torchrun or Ray needs a fixed class list: pass "
            "vocabulary_mode='restrict' and a vocabulary (--restrict-vocabulary), so "
            "every worker gives each class the same id"
        )
    record.check_outputs_free(samples, label_field, outputs, run_key, overwrite, skip_existing)


def apply_ssa_engine(
    samples,
    label_field: str = "ssa_engine",
    mask_branch: Any = DEFAULT_MASK_BRANCH,
    light: bool = False,
    top_k: int = 3,
    vocabulary: Sequence[str] | None = None,
    vocabulary_mode: str = "add",
    spacy_model: Any = DEFAULT_SPACY_MODEL,
    device: str | None = None,
    batch_size: int = 1,
    num_workers: int = 2,
    skip_existing: bool = False,
    overwrite: bool = False,
    skip_failures: bool = True,
    write_segmentation: bool = False,
    output_dir: str | None = None,
    progress: bool | Callable | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    models: EngineModels | dict | None = None,
    resume: bool = True,
    discard_reviews: bool = False,
    decider: str = "clipseg",
    backend: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    gpus_per_worker: float | None = None,
    ray_block_size: int = DEFAULT_BLOCK_SIZE,
    **mask_generator_options,
) -> SSARunSummary:
    """Runs SSA-engine over a collection: a class name and top-k proposals for every mask.

    Writes ``<label_field>`` (``fo.Detections``, one per mask: ``label`` = class name,
    ``confidence`` = share of the mask's pixels CLIPSeg gives that name, ``class_proposals``,
    ``caption``, ``ade_name``, ``coco_name``, ``predicted_iou``, ``stability_score``, ``area``,
    the doubt signals ``clip_probability``, ``clip_margin``, ``clip_agrees`` and their
    ``review_score``; README, "Reviewing labels") and, with ``write_segmentation=True``, ``<label_field>_seg`` (``fo.Segmentation`` painted
    from the labelled masks, largest first; ``mask_targets`` from the names found, 0 where no
    mask is). Each sample is written in one update.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the output field name.
        mask_branch: ``sam-vit-b|l|h``, a SAM checkpoint or saved directory, ``field:<name>``
            (an existing Detections field with instance masks, e.g. SA-1B's) or a
            ``MaskBranch``.
        light: the light models and 16 SAM points per side.
        top_k: proposals per mask (fewer when a mask has fewer candidates).
        vocabulary: class names added to every mask's candidates, or with
            ``vocabulary_mode="restrict"`` the only names a mask can get.
        vocabulary_mode: ``"add"`` or ``"restrict"``.
        spacy_model: spaCy pipeline name, path or loaded ``Language``.
        device: torch device (default: CUDA when available).
        batch_size: images whose masks go through the models together.
        num_workers: threads decoding images ahead of the models (0: none, decoded in turn).
        skip_existing: label only samples whose ``label_field`` is empty.
        overwrite: replace the labels of other runs in the output fields.
        skip_failures: record a failing sample in ``<label_field>_error`` and go on (labels
            an earlier run gave it stay, their ``run_key`` tells); False raises at the first
            failure.
        write_segmentation: also write ``<label_field>_seg``; when False, samples relabelled
            over an earlier run lose the map that run painted.
        output_dir: where large instance masks are written (default: FiftyOne's dataset
            directory).
        progress: FiftyOne's progress argument (True/False/None or a callable).
        progress_callback: called with (done, total) after each sample.
        models: loaded :class:`EngineModels`, or a dict of :meth:`EngineModels.load` options
            (``ade``, ``coco``, ``captioner``, ``clip``, ``clipseg``, ...: presets, Hugging Face
            ids or paths) loaded after the request is validated; by default the (light) presets.
        resume: skip the samples an identical earlier run (same run key) already labelled;
            False labels them again. Either way, samples whose masks a person reviewed
            (:func:`~fiftyone_ssa.labelling.apply_review.apply_review`) are kept as reviewed,
            also with ``overwrite=True``.
        discard_reviews: relabel reviewed samples too, losing their corrections.
        decider: what picks each mask's ``label`` among its proposals: ``"clipseg"`` (the
            original's: the proposal winning most of the mask's pixels in CLIPSeg's 1.6x crop)
            or ``"sam3"`` (the proposal whose SAM 3 concept covers most of the mask, on the
            whole image; weights from the ``sam3`` preset, or ``models={"sam3": ...}``).
            Ignored when ``models`` are loaded ``EngineModels`` (theirs decides).
        backend: ``"local"`` (this process; one rank of a torchrun launch) or ``"ray"``
            (Ray actors, each loading the models once; see :func:`~.ssa.apply_ssa`).
        ray_address: Ray only: None (Ray on this machine), ``"auto"`` or ``"HOST:PORT"``.
        ray_workers: Ray only: number of actors (default: one per ``gpus_per_worker`` GPUs).
        gpus_per_worker: Ray only: GPUs per actor (default: 1 on a cluster with GPUs, else 0).
        ray_block_size: Ray only: samples per block handed to an actor.
        **mask_generator_options: SAM settings overriding SSA-engine's (points_per_side=32,
            crop_n_layers=0, pred_iou_thresh=0.86, stability_score_thresh=0.92, ...).

    Returns:
        A summary of the run.
    """
    ray = backend == "ray"
    check_backend_options(backend, ray_address, ray_workers, gpus_per_worker, ray_block_size)
    check_run_options(batch_size, top_k, num_workers, None if ray else device)
    if decider not in DECIDERS:
        raise ValueError(f"Expected `decider` to be one of {list(DECIDERS)}, but got {decider!r}")
    if models is not None and not isinstance(models, (EngineModels, dict)):
        raise ValueError(
            f"Expected `models` to be EngineModels or a dict of model sources, but got "
            f"{type(models).__name__}"
        )
    vocabulary = check_vocabulary(vocabulary, vocabulary_mode)
    config = {
        "kind": "engine",
        "label_field": label_field,
        "mask_branch": mask_branch,
        "light": light,
        "top_k": top_k,
        "vocabulary": vocabulary,
        "vocabulary_mode": vocabulary_mode,
        "spacy_model": spacy_model,
        "write_segmentation": write_segmentation,
        "models": models,
        "mask_options": mask_generator_settings(mask_branch, mask_generator_options),
    }
    if decider != "clipseg":  # runs from before the choice existed keep their run key
        config["decider"] = decider
    run_key = record.make_run_key(config)
    validate_engine_request(
        samples,
        label_field,
        mask_branch,
        write_segmentation,
        vocabulary_mode,
        run_key,
        overwrite,
        skip_existing,
        many_workers=ray,
    )
    build_job = functools.partial(
        build_engine_job,
        label_field=label_field,
        mask_branch=mask_branch,
        mask_options={**engine_mask_generator_defaults(light), **config["mask_options"]},
        models=models,
        model_options={"light": light, "spacy_model": spacy_model, "decider": decider},
        settings={"top_k": top_k, "vocabulary": vocabulary, "vocabulary_mode": vocabulary_mode},
        write_segmentation=write_segmentation,
        mask_root=record.mask_directory(samples, output_dir),
    )
    ray_options = {
        "ray_address": ray_address,
        "ray_workers": ray_workers,
        "gpus_per_worker": gpus_per_worker,
        "block_size": ray_block_size,
        "review_field": label_field,
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


def build_engine_job(
    samples,
    device: Any,
    label_field: str,
    mask_branch: Any,
    mask_options: dict,
    models: EngineModels | dict | None,
    model_options: dict,
    settings: dict,
    write_segmentation: bool,
    mask_root: str,
) -> EngineJob:
    """The :class:`EngineJob` of a validated request, its models loaded on ``device`` (once
    per process: the run's own, or each Ray actor)."""
    masks = mask_source(mask_branch, device, **mask_options)
    if not isinstance(models, EngineModels):
        models = EngineModels.load(**{**model_options, "device": device, **(models or {})})
    return EngineJob(label_field, masks, models, settings, write_segmentation, mask_root)


# The attributes of every detection SSA-engine writes, besides ``label`` and ``confidence``.
ENGINE_MASK_ATTRIBUTES = {
    "class_proposals": (fo.ListField, {"subfield": fo.StringField}),
    "caption": fo.StringField,
    "ade_name": fo.StringField,
    "coco_name": fo.StringField,
    "predicted_iou": fo.FloatField,
    "stability_score": fo.FloatField,
    "area": fo.IntField,
    "clip_probability": fo.FloatField,
    "clip_margin": fo.FloatField,
    "clip_agrees": fo.BooleanField,
    "review_score": fo.FloatField,
}


class EngineJob(LabellingJob):
    """SSA-engine as a :class:`LabellingJob`: masks, then every engine model, batched."""

    def __init__(
        self,
        label_field: str,
        masks,
        models: EngineModels,
        settings: dict,
        write_segmentation: bool,
        mask_root: str,
    ):
        self.label_field = label_field
        self.review_field = label_field
        self.masks = masks
        self.models = models
        self.settings = settings
        self.write_segmentation = write_segmentation
        self.mask_root = mask_root
        self.input_fields = [masks.field] if masks.field else []
        self.seg_field = segmentation_field(label_field)
        self.targets: SegmentationTargets | None = None

    def output_schema(self) -> dict[str, tuple[type, dict]]:
        lf = self.label_field
        schema = record.label_schema(lf, fo.Detections, ENGINE_MASK_ATTRIBUTES)
        schema[f"{lf}.{record.RUN_KEY_ATTRIBUTE}"] = (fo.StringField, {})
        schema.update(record.run_labels_schema(lf))
        if self.write_segmentation:
            schema.update(record.label_schema(self.seg_field, fo.Segmentation, {}))
        schema[error_field(lf)] = (fo.StringField, {})
        return schema

    def unwritten_outputs(self) -> dict[str, type]:
        # A relabelled sample's copy of a reviewed map describes labels that are gone.
        unwritten = {before_review_field(self.seg_field): fo.Segmentation}
        if not self.write_segmentation:
            unwritten[self.seg_field] = fo.Segmentation
        return unwritten

    def prepare(self, dataset: fo.Dataset, others_remain: bool) -> None:
        if self.write_segmentation and self.settings["vocabulary_mode"] == "restrict":
            # A fixed class list: ids known before any rank labels anything.
            targets = SegmentationTargets(dataset, self.seg_field)
            for name in self.settings["vocabulary"]:
                targets.id_of(name)
            targets.save()

    def start(self, dataset: fo.Dataset, many_workers: bool = False) -> None:
        if self.write_segmentation:
            self.targets = SegmentationTargets(dataset, self.seg_field, frozen=many_workers)

    def label_batch(self, batch, images, skip_failures):
        return _label_batch(batch, images, self.masks, self.models, self.settings, skip_failures)

    def sample_values(self, sample_id, outcome, run_key):
        mask_set, carried, labels = outcome
        values = _sample_values(
            sample_id,
            self.label_field,
            mask_set,
            labels,
            self.targets,
            self.mask_root,
            run_key,
            carried,
        )
        return values, len(mask_set), sorted(set(labels.class_names))

    def after_batch(self, dataset: fo.Dataset) -> None:
        if self.targets is not None:
            self.targets.save()


def _sample_masks(sample, image: np.ndarray, masks: MaskSource, device: torch.device):
    """The sample's non-empty masks on ``device``, and the attributes each carries over from
    its source detection (None for masks a model generated)."""
    mask_set = masks.masks(sample, image, tuple(image.shape[:2]), device)
    keep = mask_set.masks.flatten(1).any(dim=1)
    carried = masks.carried(sample)
    if carried is not None:
        carried = [a for a, k in zip(carried, keep.cpu().tolist()) if k]
    return mask_set.select(keep), carried


def _label_batch(batch, images, masks, models, settings, skip_failures):
    """SSA-engine for a batch of samples; (outcome or exception, seconds) per sample.

    Outcomes are ``(mask set, carried attributes or None, MaskLabels)``. A model failure on
    the batch is retried sample by sample so one bad image does not fail its batch-mates.
    """
    start = time.perf_counter()
    mask_sets = [
        image
        if isinstance(image, Exception)
        else guard(_sample_masks, sample, image, masks, models.device)
        for sample, image in zip(batch, images)
    ]
    live = [i for i, m in enumerate(mask_sets) if not isinstance(m, Exception)]
    outcomes: list[Any] = list(mask_sets)
    try:
        labels = label_masks(
            models, [images[i] for i in live], [mask_sets[i][0].masks for i in live], **settings
        )
        for i, image_labels in zip(live, labels):
            outcomes[i] = (*mask_sets[i], image_labels)
    except Exception as err:
        if not skip_failures:
            raise
        if len(live) > 1:
            return [
                _label_batch([s], [im], masks, models, settings, skip_failures)[0]
                for s, im in zip(batch, images)
            ]
        for i in live:
            outcomes[i] = err
    seconds = (time.perf_counter() - start) / max(len(batch), 1)
    return [(outcome, seconds) for outcome in outcomes]


class SegmentationTargets:
    """Class name <-> id of ``<label_field>_seg``, extending the dataset's mask targets."""

    def __init__(self, dataset: fo.Dataset, field: str, frozen: bool = False):
        self.dataset = dataset
        self.field = field
        self.frozen = frozen
        existing = dataset.mask_targets.get(field) or {}
        self.ids = {str(name): int(i) for i, name in existing.items()}
        self.changed = False

    def id_of(self, name: str) -> int:
        if name not in self.ids:
            if self.frozen:
                raise RuntimeError(f"class {name!r} has no id in the fixed class list")
            self.ids[name] = max(self.ids.values(), default=0) + 1
            self.changed = True
        return self.ids[name]

    def save(self) -> None:
        if self.changed:
            self.dataset.mask_targets[self.field] = {i: n for n, i in self.ids.items()}
            self.dataset.save()
            self.changed = False


def engine_review_scores(labels: MaskLabels, mask_set: MaskSet) -> torch.Tensor:
    """(N,) float32 ``review_score`` of SSA-engine's masks (``core.doubt``), on the CPU."""
    doubts = engine_doubts(
        torch.tensor(labels.clip_margin, dtype=torch.float32),
        torch.tensor(labels.confidence, dtype=torch.float32),
        torch.tensor(labels.clip_agrees, dtype=torch.bool),
        mask_set.predicted_iou.cpu(),
        mask_set.stability_score.cpu(),
    )
    return review_score(doubts, ENGINE_WEIGHTS)


def _sample_values(
    sample_id,
    label_field,
    mask_set: MaskSet,
    labels: MaskLabels,
    targets: SegmentationTargets | None,
    mask_root: str,
    run_key: str,
    carried: list[dict] | None = None,
) -> dict:
    """One sample's output field values (written in a single update).

    ``carried``: per mask, attributes of its source detection to keep (field branches).
    """
    areas = mask_set.masks.flatten(1).sum(dim=1)
    area_list = areas.cpu().tolist()
    ious = mask_set.predicted_iou.cpu().tolist()
    stabilities = mask_set.stability_score.cpu().tolist()
    scores = engine_review_scores(labels, mask_set).tolist()
    attributes = [
        {
            "confidence": labels.confidence[i],
            "class_proposals": list(labels.class_proposals[i]),
            "caption": labels.captions[i],
            "ade_name": labels.ade_names[i],
            "coco_name": labels.coco_names[i],
            "predicted_iou": float_or_none(ious[i]),
            "stability_score": float_or_none(stabilities[i]),
            "area": int(area_list[i]),
            "clip_probability": float_or_none(labels.clip_probability[i]),
            "clip_margin": float_or_none(labels.clip_margin[i]),
            "clip_agrees": labels.clip_agrees[i],
            "review_score": float_or_none(scores[i]),
        }
        for i in range(len(mask_set))
    ]
    mask_dir = record.sample_mask_directory(
        mask_root, label_field, sample_id, run_key, sum(area_list)
    )
    detections = build_detections(mask_set.masks, labels.class_names, attributes, mask_dir, carried)
    detections[record.RUN_KEY_ATTRIBUTE] = run_key
    record.record_run_labels(detections)
    values = {label_field: detections, error_field(label_field): None}
    if targets is not None:
        height, width = mask_set.masks.shape[1:]
        ids = torch.tensor(
            [targets.id_of(n) for n in labels.class_names],
            dtype=torch.int64,
            device=mask_set.masks.device,
        )
        base = torch.zeros((height, width), dtype=torch.int64, device=mask_set.masks.device)
        painted = paint_masks(base, mask_set.masks, ids, painting_order(areas))
        values[targets.field] = fo.Segmentation(mask=class_map_to_numpy(painted))
    return values
