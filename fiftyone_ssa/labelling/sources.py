"""Where a run's inputs come from: batches of samples, their decoded images, their class maps
and masks (from a model branch, or from labels already on the samples), per-sample errors.

Shared by SSA (:mod:`.ssa`) and SSA-engine (:mod:`.engine`). A ``field:<name>`` branch spec
becomes a source that reads the field; any other spec a model branch
(:func:`fiftyone_ssa.models.registry.create_branch`). Callers ask the source, never its kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fiftyone as fo
import fiftyone.core.fields as fof
import numpy as np
import torch

from fiftyone_ssa.core.images import read_rgb, read_size
from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.labels import carried_attributes, detections_to_mask_set, segmentation_to_tensor
from fiftyone_ssa.models.masks.branches import MaskBranch
from fiftyone_ssa.models.registry import create_branch
from fiftyone_ssa.models.semantic.branches import SemanticBranch

FIELD_PREFIX = "field:"

logger = logging.getLogger(__name__)


def iter_batches(samples, batch_size: int) -> Iterator[list[fo.Sample]]:
    """The samples of a collection in lists of at most ``batch_size``, one query per list.

    The ids are listed first. A cursor held open while the models run can time out (ten
    minutes without a read), and FiftyOne restarts it by skipping as many samples as were
    read: on a view of the samples still to label, which the run's own writes shrink, that
    would skip samples that are still pending.
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
    ids = samples.values("id")
    for start in range(0, len(ids), batch_size):
        yield list(samples.select(ids[start : start + batch_size], ordered=True))


def prefetch(samples_batches, read: Callable, num_workers: int):
    """Yields (batch, images), decoding the next batch's images in the background."""
    if num_workers <= 0:
        for batch in samples_batches:
            yield batch, [read(s) for s in batch]
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending = None
        for batch in samples_batches:
            futures = [pool.submit(read, s) for s in batch]
            if pending is not None:
                yield pending[0], [f.result() for f in pending[1]]
            pending = (batch, futures)
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]


def safe_reader(needs_image: bool) -> Callable:
    """A reader of a sample's image (or only its size when no model needs the pixels).

    The reader returns the exception instead of raising it, so that the failure is reported
    for that sample alone.
    """

    def read(sample):
        try:
            return read_rgb(sample.filepath) if needs_image else read_size(sample.filepath)
        except Exception as err:  # reported per sample
            return err

    return read


def guard(fn, *args):
    """``fn(*args)``, or the exception it raised (reported per sample)."""
    try:
        return fn(*args)
    except Exception as err:  # reported per sample
        return err


def field_name(spec: Any) -> str | None:
    """The sample field a branch spec reads (``"field:<name>"``), or None for a model branch.

    Raises:
        ValueError: ``"field:"`` with no name.
    """
    if not (isinstance(spec, str) and spec.startswith(FIELD_PREFIX)):
        return None
    name = spec[len(FIELD_PREFIX) :]
    if not name:
        raise ValueError("Expected a field name after 'field:', but got an empty name")
    return name


def mask_generator_settings(spec: Any, options: dict) -> dict:
    """The mask generator settings that apply: none when the masks come from a field.

    Settings given with a ``field:`` branch would change nothing but the run key (a rerun with
    other, equally unused settings would relabel every sample); they are dropped with a warning.
    """
    if options and field_name(spec):
        logger.warning(
            "ignoring mask generator settings %s: the masks come from field %r",
            sorted(options),
            field_name(spec),
        )
        return {}
    return options


def field_classes(samples, name: str) -> dict[int, str]:
    """A Segmentation field's classes: its mask targets (else the default ones), id -> name."""
    dataset = samples._dataset
    targets = dataset.mask_targets.get(name) or dataset.default_mask_targets or {}
    if targets and fof.is_rgb_mask_targets(targets):
        raise ValueError(
            f"field {name!r} has RGB mask targets; the semantic branch needs integer class ids"
        )
    return {int(k): str(v) for k, v in targets.items()}


class ClassMapSource:
    """Where a run's class maps come from.

    Attributes:
        field: the Segmentation field read from each sample (None for a model).
        device: the model's device (None for a field).
        needs_image: whether the decoded pixels are needed (else only the image size).
    """

    field: str | None = None
    device: torch.device | None = None
    needs_image: bool = True

    @property
    def classes(self) -> dict[int, str]:
        """Class id -> name (a callable branch learns them while it runs)."""
        raise NotImplementedError

    def class_maps(self, batch: list, images: list, device: torch.device) -> list:
        """The (H, W) int64 class map of every sample on ``device``, or the exception that
        stopped it (an exception in ``images`` is passed on).

        Args:
            batch: B samples.
            images: B decoded (H, W, 3) uint8 images, (H, W) sizes, or exceptions.
            device: where the maps go.
        """
        raise NotImplementedError


class BranchClassMaps(ClassMapSource):
    """Class maps from a semantic branch, one batched call for the readable images."""

    def __init__(self, branch: SemanticBranch):
        self.branch = branch
        self.device = branch.device

    @property
    def classes(self) -> dict[int, str]:
        return self.branch.classes

    def class_maps(self, batch, images, device):
        maps: list = [image if isinstance(image, Exception) else None for image in images]
        live = [i for i in range(len(batch)) if maps[i] is None]
        if live:
            for i, class_map in zip(live, self.branch.predict([images[i] for i in live])):
                maps[i] = class_map.to(device)
        return maps


class FieldClassMaps(ClassMapSource):
    """Class maps of a Segmentation field already on the samples (its mask targets' classes)."""

    needs_image = False

    def __init__(self, field: str, classes: dict[int, str]):
        self.field = field
        self._classes = classes

    @property
    def classes(self) -> dict[int, str]:
        return self._classes

    def class_maps(self, batch, images, device):
        maps = []
        for sample, image in zip(batch, images):
            label = sample[self.field]
            if isinstance(image, Exception):
                maps.append(image)
            elif label is None:
                maps.append(ValueError(f"sample has no {self.field!r} label"))
            else:
                maps.append(guard(segmentation_to_tensor, label, device))
        return maps


class MaskSource:
    """Where a run's masks come from.

    Attributes:
        field: the Detections field read from each sample (None for a model).
        device: the model's device (None for a field).
        needs_image: whether the decoded pixels are needed (else only the image size).
    """

    field: str | None = None
    device: torch.device | None = None
    needs_image: bool = True

    def masks(
        self, sample, image: np.ndarray | None, size: tuple[int, int], device: torch.device
    ) -> MaskSet:
        """A sample's N masks, (N, H, W) bool on ``device``, with their scores.

        Args:
            sample: the sample.
            image: (H, W, 3) uint8 RGB; None when the source does not need it.
            size: the image's (H, W).
            device: where the masks go.
        """
        raise NotImplementedError

    def carried(self, sample) -> list[dict] | None:
        """The attributes the masks carry over from their source detections (SA-1B ids,
        prompts, ...; see ``labels.carried_attributes``), in :meth:`masks`' order; None when
        the masks are new."""
        return None


class BranchMasks(MaskSource):
    """Masks generated by a mask branch (SAM)."""

    def __init__(self, branch: MaskBranch):
        self.branch = branch
        self.device = branch.device

    def masks(self, sample, image, size, device):
        mask_set = self.branch.generate(image)
        if tuple(mask_set.masks.shape[1:]) != tuple(size):
            raise ValueError(
                f"mask branch returned {tuple(mask_set.masks.shape[1:])} masks for a {size} image"
            )
        return MaskSet(
            mask_set.masks.to(device),
            mask_set.predicted_iou.to(device),
            mask_set.stability_score.to(device),
        )


class FieldMasks(MaskSource):
    """The instance masks of a Detections field already on the samples."""

    needs_image = False

    def __init__(self, field: str):
        self.field = field

    def masks(self, sample, image, size, device):
        return detections_to_mask_set(sample[self.field], size, device)

    def carried(self, sample):
        return carried_attributes(sample[self.field])


def class_map_source(
    spec: Any, samples, device: Any = None, classes: list[str] | dict[int, str] | None = None
) -> ClassMapSource:
    """The class-map source of a semantic branch spec (see ``apply_ssa``'s
    ``semantic_branch``): a field reader for ``field:<name>``, else the model branch."""
    field = field_name(spec)
    if field:
        if classes is not None:
            raise ValueError(
                "`classes` (--classes) is only for open-vocabulary branches (CLIPSeg, SAM 3); "
                f"{spec!r} (read with its "
                "field's mask targets) has its own classes"
            )
        return FieldClassMaps(field, field_classes(samples, field))
    options = {"device": device} if classes is None else {"device": device, "classes": classes}
    return BranchClassMaps(create_branch(spec, kind="semantic", **options))


def mask_source(spec: Any, device: Any = None, **mask_generator_options) -> MaskSource:
    """The mask source of a mask branch spec (see ``apply_ssa``'s ``mask_branch``): a field
    reader for ``field:<name>``, else the model branch built with the generator options."""
    field = field_name(spec)
    if field:
        return FieldMasks(field)
    return BranchMasks(create_branch(spec, kind="mask", device=device, **mask_generator_options))
