"""SSA-engine over a FiftyOne collection: an open-vocabulary name and top-k proposals per mask.

Per image (DESIGN.md, "SSA-engine algorithm"): masks from an existing field or SAM; the top-1
ADE20K and refined COCO names of each mask from two OneFormer class maps; a BLIP caption of the
mask's 1.6x crop and its spaCy noun phrases; CLIP ranks the de-duplicated candidates on the 1.2x
crop and keeps the top-k (``class_proposals``); CLIPSeg picks the proposal that wins most of the
mask's pixels in the 1.6x crop (``class_name``).

Every model runs batched across all masks of all images of a batch; no model is called per
mask. :func:`label_masks` is that batched core (no FiftyOne); :func:`apply_ssa_engine` feeds it a
FiftyOne view and writes the label fields.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import torch

from fiftyone_ssa import distributed, runs
from fiftyone_ssa.batching import check_label_field, guard
from fiftyone_ssa.core.crops import mask_boxes_xywh, scale_boxes
from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.core.vocabulary import build_candidates, check_vocabulary, refine_coco_name
from fiftyone_ssa.core.voting import paint_masks, painting_order, vote_mask_classes
from fiftyone_ssa.labels import build_detections, class_map_to_numpy, detections_to_mask_set
from fiftyone_ssa.models import weights
from fiftyone_ssa.models.captioner import BlipCaptioner
from fiftyone_ssa.models.clip_filter import ClipFilter
from fiftyone_ssa.models.clipseg_decider import ClipSegDecider
from fiftyone_ssa.models.masks import FieldMaskBranch
from fiftyone_ssa.models.nouns import DEFAULT_SPACY_MODEL, NounExtractor
from fiftyone_ssa.models.registry import create_branch
from fiftyone_ssa.models.semantic import FieldSemanticBranch, SemanticBranch, default_device
from fiftyone_ssa.pipeline import DEFAULT_MASK_BRANCH, MAX_INLINE_MASK_PIXELS
from fiftyone_ssa.run_loop import LabellingJob, execute_labelling_run
from fiftyone_ssa.runs import SSARunSummary

logger = logging.getLogger(__name__)

# Crop scales about the mask's box centre (the original SSA-engine's).
CLIP_CROP_SCALE = 1.2
CAPTION_CROP_SCALE = 1.6
CLIPSEG_CROP_SCALE = 1.6

# The models of SSA-engine, and of its light mode.
DEFAULT_ENGINE_MODELS = {
    "ade": "oneformer-ade20k-swin-large",
    "coco": "oneformer-coco-swin-large",
    "captioner": "blip-large",
    "clip": "clip-vit-l-14",
    "clipseg": "clipseg-rd64-refined",
}
LIGHT_ENGINE_MODELS = {
    "ade": "oneformer-ade20k-swin-tiny",
    "coco": "oneformer-coco-swin-large",
    "captioner": "blip-base",
    "clip": "clip-vit-b-32",
    "clipseg": "clipseg-rd16",
}


def engine_mask_generator_defaults(light: bool = False) -> dict:
    """SAM settings of SSA-engine: 32 points per side (16 light), no crop layers."""
    return {"points_per_side": 16 if light else 32, "crop_n_layers": 0}


def _model_dir(source: str | os.PathLike, task: str) -> Path:
    """The local directory of a preset, Hugging Face id or path for a ``task`` model."""
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name in weights.PRESETS or weights.looks_like_hf_id(name):
        return weights.resolve(name)
    valid = ", ".join(n for n, p in weights.PRESETS.items() if p.task == task)
    raise ValueError(
        f"unknown {task} model {name!r}: expected one of {valid}, a local directory or a "
        "Hugging Face id"
    )


@dataclass
class EngineModels:
    """The models of SSA-engine, loaded once per run.

    Attributes:
        ade: the ADE20K close-set branch (OneFormer by default; any semantic branch works).
        coco: the COCO panoptic close-set branch (names refined: ``wall-other-merged`` -> wall).
        captioner: BLIP.
        nouns: the spaCy noun-phrase extractor.
        clip: the CLIP candidate filter.
        clipseg: the CLIPSeg decider.
    """

    ade: SemanticBranch
    coco: SemanticBranch
    captioner: BlipCaptioner
    nouns: NounExtractor
    clip: ClipFilter
    clipseg: ClipSegDecider

    @property
    def device(self) -> torch.device:
        """Where the crops and masks go (the CLIP filter's device)."""
        return self.clip.device

    @classmethod
    def load(
        cls,
        light: bool = False,
        device: str | torch.device | None = None,
        ade: Any = None,
        coco: Any = None,
        captioner: Any = None,
        clip: Any = None,
        clipseg: Any = None,
        spacy_model: Any = DEFAULT_SPACY_MODEL,
        clip_architecture: str | None = None,
        half: bool = True,
        crop_batch_size: int = 64,
    ) -> EngineModels:
        """Loads every model; each is a preset, Hugging Face id, local path or loaded instance.

        Args:
            light: the light models (OneFormer ADE20K Swin-T, BLIP base, CLIP ViT-B/32,
                CLIPSeg rd16) where a model is not given.
            device: torch device; CUDA when available by default.
            ade: ADE20K semantic branch (``create_branch`` names).
            coco: COCO panoptic semantic branch (``create_branch`` names).
            captioner: BLIP directory or preset.
            clip: open_clip preset, directory or checkpoint (see ``clip_architecture``).
            clipseg: CLIPSeg directory or preset.
            spacy_model: spaCy pipeline name, path, loaded ``Language`` or ``NounExtractor``.
            clip_architecture: open_clip model name of a CLIP checkpoint file.
            half: half precision on CUDA.
            crop_batch_size: crops per BLIP / CLIPSeg call (CLIP takes 4x as many).

        Raises:
            FileNotFoundError: a model whose weights are not in the models directory.
            ImportError: spaCy or its pipeline is missing.
            ValueError: a path that is not a model of the expected kind.
        """
        defaults = LIGHT_ENGINE_MODELS if light else DEFAULT_ENGINE_MODELS
        device = torch.device(device) if device else default_device()
        # The cheap, most often missing one first: fail before loading gigabytes.
        nouns = (
            spacy_model if isinstance(spacy_model, NounExtractor) else NounExtractor(spacy_model)
        )

        def branch(source, role):
            source = source if source is not None else defaults[role]
            created = create_branch(source, kind="semantic", device=device)
            if isinstance(created, FieldSemanticBranch):
                raise ValueError(f"Expected a model for the {role} branch, but got {source!r}")
            return created

        captioner = captioner if captioner is not None else defaults["captioner"]
        if not isinstance(captioner, BlipCaptioner):
            captioner = BlipCaptioner(
                _model_dir(captioner, "caption"),
                device=device,
                half=half,
                batch_size=crop_batch_size,
            )
        clip = clip if clip is not None else defaults["clip"]
        if not isinstance(clip, ClipFilter):
            clip = ClipFilter(
                clip,
                architecture=clip_architecture,
                device=device,
                half=half,
                batch_size=4 * crop_batch_size,
            )
        clipseg = clipseg if clipseg is not None else defaults["clipseg"]
        if not isinstance(clipseg, ClipSegDecider):
            clipseg = ClipSegDecider(
                _model_dir(clipseg, "semantic"),
                device=device,
                half=half,
                batch_size=crop_batch_size,
            )
        return cls(branch(ade, "ade"), branch(coco, "coco"), captioner, nouns, clip, clipseg)


@dataclass
class MaskLabels:
    """SSA-engine's labels for the N masks of one image (lists of N entries).

    Attributes:
        class_names: CLIPSeg's choice among the proposals.
        class_proposals: CLIP's top-k candidates, best first.
        proposal_scores: CLIP probabilities of the proposals over the mask's candidates.
        confidence: the share of the mask's pixels its class wins in CLIPSeg's crop.
        captions: BLIP captions of the 1.6x crops.
        ade_names: top-1 ADE20K names.
        coco_names: top-1 COCO names, refined.
        candidates: the candidate lists CLIP ranked.
    """

    class_names: list[str]
    class_proposals: list[list[str]]
    proposal_scores: list[list[float]]
    confidence: list[float]
    captions: list[str]
    ade_names: list[str]
    coco_names: list[str]
    candidates: list[list[str]]


def _top1_names(
    branch: SemanticBranch, class_map: torch.Tensor, masks: torch.Tensor, refine=None
) -> list[str]:
    class_map = class_map.to(masks.device)
    top = int(class_map.max()) + 1 if class_map.numel() else 1
    labels = vote_mask_classes(masks, class_map, max(branch.num_classes, top)).labels.tolist()
    names = [branch.classes.get(c, str(c)) for c in labels]
    return [refine(n) for n in names] if refine else names


def label_masks(
    models: EngineModels,
    images: Sequence[np.ndarray],
    masks: Sequence[torch.Tensor],
    top_k: int = 3,
    vocabulary: Sequence[str] | None = None,
    vocabulary_mode: str = "add",
) -> list[MaskLabels]:
    """SSA-engine on a batch of images, every model batched across all their masks.

    Args:
        models: the loaded models.
        images: B arrays (H_i, W_i, 3) uint8 RGB.
        masks: B tensors (N_i, H_i, W_i) bool.
        top_k: proposals per mask (fewer when a mask has fewer candidates).
        vocabulary: user class names, added to every mask's candidates or, with
            ``vocabulary_mode="restrict"``, the only candidates.
        vocabulary_mode: ``"add"`` or ``"restrict"``.

    Returns:
        B :class:`MaskLabels`.
    """
    if top_k < 1:
        raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
    if len(images) != len(masks):
        raise ValueError(
            f"Expected one mask tensor per image, but got {len(masks)} for {len(images)} images"
        )
    vocabulary = check_vocabulary(vocabulary, vocabulary_mode)
    device = models.device
    tensors, masks_on_device = [], []
    for image, image_masks in zip(images, masks):
        if image_masks.dim() != 3 or tuple(image_masks.shape[1:]) != tuple(image.shape[:2]):
            raise ValueError(
                f"Expected masks of shape (N, {image.shape[0]}, {image.shape[1]}), "
                f"but got {tuple(image_masks.shape)}"
            )
        tensors.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device))
        masks_on_device.append(image_masks.to(device).bool())
    live = [i for i, m in enumerate(masks_on_device) if m.shape[0]]
    ade_maps = models.ade.predict([images[i] for i in live]) if live else []
    coco_maps = models.coco.predict([images[i] for i in live]) if live else []
    ade_names, coco_names, clip_boxes, large_boxes = [], [], [], []
    for i, image_masks in enumerate(masks_on_device):
        if i in live:
            ade_names.append(_top1_names(models.ade, ade_maps[live.index(i)], image_masks))
            coco_names.append(
                _top1_names(models.coco, coco_maps[live.index(i)], image_masks, refine_coco_name)
            )
        else:
            ade_names.append([])
            coco_names.append([])
        boxes = mask_boxes_xywh(image_masks)
        size = tuple(image_masks.shape[1:])
        clip_boxes.append(scale_boxes(boxes, CLIP_CROP_SCALE, size))
        large_boxes.append(scale_boxes(boxes, CAPTION_CROP_SCALE, size))
    # CLIPSeg reads the same 1.6x crop as BLIP.
    captions = models.captioner.caption(tensors, large_boxes)
    nouns = models.nouns.extract(captions)
    flat_ade = [n for names in ade_names for n in names]
    flat_coco = [n for names in coco_names for n in names]
    candidates = [
        build_candidates([a, c], phrases, vocabulary, vocabulary_mode) or [a or "object"]
        for a, c, phrases in zip(flat_ade, flat_coco, nouns)
    ]
    proposals, scores = models.clip.top_k(tensors, clip_boxes, candidates, top_k)
    decisions = models.clipseg.decide(tensors, large_boxes, masks_on_device, proposals)
    results, start = [], 0
    for i, image_masks in enumerate(masks_on_device):
        stop = start + int(image_masks.shape[0])
        part = slice(start, stop)
        results.append(
            MaskLabels(
                class_names=[d.name for d in decisions[part]],
                class_proposals=proposals[part],
                proposal_scores=scores[part],
                confidence=[d.share for d in decisions[part]],
                captions=captions[part],
                ade_names=ade_names[i],
                coco_names=coco_names[i],
                candidates=candidates[part],
            )
        )
        start = stop
    return results


def engine_output_fields(label_field: str, write_segmentation: bool = False) -> list[str]:
    """The fields ``apply_ssa_engine`` writes for ``label_field``."""
    return [label_field, f"{label_field}_seg"] if write_segmentation else [label_field]


def validate_engine_request(
    samples, label_field: str, masks, write_segmentation: bool, vocabulary_mode: str
) -> None:
    """Checks the inputs before loading models; one-line ValueErrors.

    Whether the output fields are free is checked by the run loop (it knows the run key).
    """
    runs.check_target(samples, label_field)
    if isinstance(masks, FieldMaskBranch):
        check_label_field(samples, masks.field, fo.Detections, "mask branch")
    outputs = engine_output_fields(label_field, write_segmentation)
    if getattr(masks, "field", None) in outputs:
        raise ValueError(
            f"output field {masks.field!r} is also the mask branch's input; choose "
            "another label_field"
        )
    if (
        write_segmentation
        and vocabulary_mode != "restrict"
        and distributed.current_ranks().is_distributed
    ):
        raise ValueError(
            "write_segmentation under torchrun needs a fixed class list: pass "
            "vocabulary_mode='restrict' and a vocabulary (--restrict-vocabulary), so "
            "every rank gives each class the same id"
        )


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
    **mask_generator_options,
) -> SSARunSummary:
    """Runs SSA-engine over a collection: a class name and top-k proposals for every mask.

    Writes ``<label_field>`` (``fo.Detections``, one per mask: ``label`` = class name,
    ``confidence`` = share of the mask's pixels CLIPSeg gives that name, ``class_proposals``,
    ``caption``, ``ade_name``, ``coco_name``, ``predicted_iou``, ``stability_score``, ``area``)
    and, with ``write_segmentation=True``, ``<label_field>_seg`` (``fo.Segmentation`` painted
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
        num_workers: threads decoding images ahead of the models.
        skip_existing: label only samples whose ``label_field`` is empty.
        overwrite: replace the labels of other runs in the output fields.
        skip_failures: record a failing sample in ``<label_field>_error`` and go on; False
            raises at the first failure.
        write_segmentation: also write ``<label_field>_seg``.
        output_dir: where large instance masks are written (default: FiftyOne's dataset
            directory).
        progress: FiftyOne's progress argument (True/False/None or a callable).
        progress_callback: called with (done, total) after each sample.
        models: loaded :class:`EngineModels`, or a dict of :meth:`EngineModels.load` options
            (``ade``, ``coco``, ``captioner``, ``clip``, ``clipseg``, ...: presets, Hugging Face
            ids or paths) loaded after the request is validated; by default the (light) presets.
        resume: skip the samples an identical earlier run (same run key) already labelled;
            False labels them again.
        **mask_generator_options: SAM settings overriding SSA-engine's (points_per_side=32,
            crop_n_layers=0, pred_iou_thresh=0.86, stability_score_thresh=0.92, ...).

    Returns:
        A summary of the run.
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
    if top_k < 1:
        raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
    if models is not None and not isinstance(models, (EngineModels, dict)):
        raise ValueError(
            f"Expected `models` to be EngineModels or a dict of model sources, but got "
            f"{type(models).__name__}"
        )
    vocabulary = check_vocabulary(vocabulary, vocabulary_mode)
    device = device or distributed.default_device(distributed.current_ranks())
    options = {**engine_mask_generator_defaults(light), **mask_generator_options}
    masks = create_branch(mask_branch, kind="mask", device=device, **options)
    validate_engine_request(samples, label_field, masks, write_segmentation, vocabulary_mode)
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
        "mask_options": mask_generator_options,
    }
    if not isinstance(models, EngineModels):
        options = {"light": light, "device": device, "spacy_model": spacy_model, **(models or {})}
        models = EngineModels.load(**options)
    mask_root = output_dir or os.path.join(
        fo.config.default_dataset_dir, "fiftyone-ssa", samples._dataset.name
    )
    settings = {"top_k": top_k, "vocabulary": vocabulary, "vocabulary_mode": vocabulary_mode}
    job = EngineJob(label_field, masks, models, settings, write_segmentation, mask_root)
    return execute_labelling_run(
        samples,
        job,
        runs.make_run_key(config),
        config,
        batch_size=batch_size,
        num_workers=num_workers,
        overwrite=overwrite,
        skip_existing=skip_existing,
        resume=resume,
        skip_failures=skip_failures,
        progress=progress,
        progress_callback=progress_callback,
    )


# The attributes of every detection SSA-engine writes, besides ``label`` and ``confidence``.
ENGINE_MASK_ATTRIBUTES = {
    "class_proposals": (fo.ListField, {"subfield": fo.StringField}),
    "caption": fo.StringField,
    "ade_name": fo.StringField,
    "coco_name": fo.StringField,
    "predicted_iou": fo.FloatField,
    "stability_score": fo.FloatField,
    "area": fo.IntField,
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
        self.masks = masks
        self.models = models
        self.settings = settings
        self.write_segmentation = write_segmentation
        self.mask_root = mask_root
        self.input_fields = [masks.field] if isinstance(masks, FieldMaskBranch) else []
        self.seg_field = f"{label_field}_seg"
        self.targets: _SegmentationTargets | None = None

    def output_types(self) -> dict[str, type]:
        types = {self.label_field: fo.Detections, runs.error_field(self.label_field): str}
        if self.write_segmentation:
            types[self.seg_field] = fo.Segmentation
        return types

    def output_schema(self) -> dict[str, tuple[type, dict]]:
        lf = self.label_field
        schema = runs.label_schema(lf, fo.Detections, ENGINE_MASK_ATTRIBUTES)
        schema[f"{lf}.{runs.RUN_KEY_ATTRIBUTE}"] = (fo.StringField, {})
        if self.write_segmentation:
            schema.update(runs.label_schema(self.seg_field, fo.Segmentation, {}))
        schema[runs.error_field(lf)] = (fo.StringField, {})
        return schema

    def prepare(self, dataset: fo.Dataset) -> None:
        if self.write_segmentation and self.settings["vocabulary_mode"] == "restrict":
            # A fixed class list: ids known before any rank labels anything.
            targets = _SegmentationTargets(dataset, self.seg_field)
            for name in self.settings["vocabulary"]:
                targets.id_of(name)
            targets.save()

    def start(self, dataset: fo.Dataset) -> None:
        if self.write_segmentation:
            self.targets = _SegmentationTargets(
                dataset, self.seg_field, frozen=distributed.current_ranks().is_distributed
            )

    def label_batch(self, batch, images, skip_failures):
        return _label_batch(batch, images, self.masks, self.models, self.settings, skip_failures)

    def write(self, dataset, sample_id, outcome, run_key):
        mask_set, labels = outcome
        _write_sample(
            dataset,
            sample_id,
            self.label_field,
            mask_set,
            labels,
            self.targets,
            self.mask_root,
            run_key,
        )
        return len(mask_set), sorted(set(labels.class_names))

    def after_batch(self, dataset: fo.Dataset) -> None:
        if self.targets is not None:
            self.targets.save()


def _sample_masks(sample, image: np.ndarray, masks, device: torch.device) -> MaskSet:
    """The sample's non-empty masks on ``device``: from its field or from the mask branch."""
    size = tuple(image.shape[:2])
    if isinstance(masks, FieldMaskBranch):
        mask_set = detections_to_mask_set(sample[masks.field], size, device)
    else:
        mask_set = masks.generate(image)
        if tuple(mask_set.masks.shape[1:]) != size:
            raise ValueError(
                f"mask branch returned {tuple(mask_set.masks.shape[1:])} masks for a {size} image"
            )
        mask_set = MaskSet(
            mask_set.masks.to(device),
            mask_set.predicted_iou.to(device),
            mask_set.stability_score.to(device),
        )
    return mask_set.select(mask_set.masks.flatten(1).any(dim=1))


def _label_batch(batch, images, masks, models, settings, skip_failures):
    """SSA-engine for a batch of samples; (outcome or exception, seconds) per sample.

    Outcomes are ``(mask set, MaskLabels)``. A model failure on the batch is retried sample by
    sample so one bad image does not fail its batch-mates.
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
            models, [images[i] for i in live], [mask_sets[i].masks for i in live], **settings
        )
        for i, image_labels in zip(live, labels):
            outcomes[i] = (mask_sets[i], image_labels)
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


class _SegmentationTargets:
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


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _write_sample(
    dataset,
    sample_id,
    label_field,
    mask_set: MaskSet,
    labels: MaskLabels,
    targets: _SegmentationTargets | None,
    mask_root: str,
    run_key: str,
) -> None:
    """Writes one sample's output fields in a single update."""
    areas = mask_set.masks.flatten(1).sum(dim=1)
    area_list = areas.cpu().tolist()
    ious = mask_set.predicted_iou.cpu().tolist()
    stabilities = mask_set.stability_score.cpu().tolist()
    attributes = [
        {
            "confidence": labels.confidence[i],
            "class_proposals": list(labels.class_proposals[i]),
            "caption": labels.captions[i],
            "ade_name": labels.ade_names[i],
            "coco_name": labels.coco_names[i],
            "predicted_iou": _none_if_nan(ious[i]),
            "stability_score": _none_if_nan(stabilities[i]),
            "area": int(area_list[i]),
        }
        for i in range(len(mask_set))
    ]
    mask_dir = None
    if sum(area_list) > MAX_INLINE_MASK_PIXELS:
        mask_dir = os.path.join(mask_root, label_field, str(sample_id))
    detections = build_detections(mask_set.masks, labels.class_names, attributes, mask_dir)
    detections[runs.RUN_KEY_ATTRIBUTE] = run_key
    values = {label_field: detections, runs.error_field(label_field): None}
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
    runs.write_sample_fields(dataset, sample_id, values)
