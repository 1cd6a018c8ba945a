"""SA-1B import: ``sa_<id>.jpg`` + ``sa_<id>.json`` (COCO RLE masks) -> a FiftyOne dataset.

Each image becomes a sample whose ``label_field`` holds one ``fo.Detection`` per annotation: the
mask decoded from its RLE and cropped to the box (written as a PNG and referenced by
``mask_path``, so that no sample document nears MongoDB's 16 MB limit), ``bounding_box`` from the
annotation's ``bbox`` (relative ``[x, y, w, h]``), and the attributes ``predicted_iou``,
``stability_score``, ``point_coords``, ``crop_box``, ``area``, ``sa1b_id`` (the annotation's
``id``; ``id`` is FiftyOne's own), ``sa1b_bbox`` and ``rle_counts`` (the original ``bbox`` and
``counts``, which make an unchanged mask export byte-exact). SSA-engine output (annotations
carrying ``class_name`` / ``class_proposals``) imports with ``label`` = ``class_name``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.sample as fos
import fiftyone.core.utils as fou
import numpy as np
from PIL import Image

from fiftyone_ssa.core.images import read_size
from fiftyone_ssa.core.rle import (
    compress_counts,
    rle_area,
    rle_to_bbox,
    rle_to_mask,
)
from fiftyone_ssa.fields import check_field_name

logger = logging.getLogger(__name__)

IMAGE_ID_FIELD = "sa1b_image_id"
"""Sample field holding the ``image_id`` of the SA-1B ``image`` record."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Detection attributes declared on the schema so the App sidebar can filter on them.
_FILTERABLE_ATTRIBUTES = {
    "predicted_iou": (fo.FloatField, None),
    "stability_score": (fo.FloatField, None),
    "area": (fo.IntField, None),
    "class_proposals": (fo.ListField, fo.StringField),
}
_ADD_BATCH_SIZE = 16  # samples per database write


class SA1BFileError(Exception):
    """One file of an SA-1B directory that cannot be imported (reported, not raised)."""


@dataclass
class _ImageResult:
    """What a worker read for one image (``sample`` None when the file failed)."""

    key: str
    sample: fo.Sample | None = None
    has_json: bool = True
    error: str | None = None


@dataclass
class SA1BImportSummary:
    """Counts and per-file errors of one import (also stored in ``dataset.info["sa1b_import"]``)."""

    num_samples: int = 0
    num_annotations: int = 0
    num_without_json: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    mask_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------
# Import


def import_sa1b(
    dataset_dir: str,
    name: str | None = None,
    label_field: str = "sa1b",
    mask_dir: str | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    persistent: bool = False,
) -> fo.Dataset:
    """Imports an SA-1B-format directory (``sa_<id>.jpg`` + ``sa_<id>.json``) as a new dataset.

    Images without a JSON are imported without masks (counted in the summary), and so are
    images sharing their stem with another (``cat.jpg``, ``cat.png``: the first by name gets
    ``cat.json``; export refuses such stems, whose files would collide). Files that
    cannot be imported (malformed JSON, a JSON whose image is missing, an RLE or ``image``
    record whose size disagrees with the image) are skipped and reported per file; the summary
    is logged and stored in ``dataset.info["sa1b_import"]``.

    The import is all or nothing: when it fails (any exception, a KeyboardInterrupt included)
    the dataset it was building is deleted before the exception propagates. When it replaces
    an existing dataset (``overwrite``), the new one is built under a temporary name and takes
    ``name`` only once complete, so a failed import leaves the existing dataset in place. Mask
    PNGs already written are not removed, nor are the replaced dataset's.

    Args:
        dataset_dir: directory holding the images and JSON files (not searched recursively).
        name: name of the new dataset (default: FiftyOne picks one).
        label_field: the ``fo.Detections`` field to write: a new top-level field name (letters,
            digits and underscores, starting with a letter; not a built-in sample field such
            as ``filepath`` or ``metadata``, not ``sa1b_image_id``).
        mask_dir: where the mask PNGs go, as ``<mask_dir>/<image stem>/<index>.png``. Default:
            ``<fo.config.default_dataset_dir>/<dataset slug>/<label_field>`` (the slug of the
            final dataset name; ``<label_field>-<random suffix>`` when replacing a dataset, so
            that its masks stay intact if the import fails).
        num_workers: threads decoding files (default: FiftyOne's recommendation; >= 0).
        overwrite: replace an existing dataset called ``name`` (deleted only once the new one
            is complete).
        progress: show a progress bar (None: FiftyOne's default), or a progress callback.
        persistent: make the dataset persistent (the CLI does); set once the import succeeded.

    Returns:
        The new dataset.

    Raises:
        ValueError: ``label_field`` is not a valid new field name, ``num_workers`` is
            negative, ``dataset_dir`` is not a directory or holds no images / JSON files, or
            the dataset exists and ``overwrite`` is False (all checked before any dataset is
            created or deleted).
        RuntimeError: no file could be imported (the dataset is deleted again).
    """
    _check_label_field(label_field)
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"Expected `num_workers` to be >= 0, but got {num_workers}")
    if not os.path.isdir(dataset_dir):
        raise ValueError(f"Expected `dataset_dir` to be a directory, but got {dataset_dir!r}")
    items = _pair_files(dataset_dir)
    if not items:
        raise ValueError(
            f"Expected `dataset_dir` to hold SA-1B images or JSON, but {dataset_dir!r} has none"
        )
    replace = name is not None and fo.dataset_exists(name)
    if replace and not overwrite:
        raise ValueError(f"Dataset {name!r} already exists; pass overwrite=True to replace it")

    # Replacing: build under a temporary name so that the existing dataset outlives a failure.
    dataset = fo.Dataset(_temporary_name(name, "importing") if replace else name)
    replaced = None
    try:
        if mask_dir is None:
            slug = fou.to_slug(name) if name is not None else dataset.slug
            # A replacement writes its own folder: the replaced dataset's masks stay intact.
            folder = f"{label_field}-{uuid.uuid4().hex[:8]}" if replace else label_field
            mask_dir = os.path.join(fo.config.default_dataset_dir, slug, folder)
        summary = _import_files(
            dataset,
            dataset_dir,
            items,
            label_field,
            os.path.abspath(mask_dir),
            num_workers,
            progress,
        )
        if persistent:
            dataset.persistent = True
        if replace:
            replaced = _take_name(dataset, name)
    except BaseException:
        _discard(dataset)
        raise
    if replaced is not None:
        replaced.delete()
    _log_summary(summary, label_field)
    return dataset


def _take_name(dataset: fo.Dataset, name: str) -> fo.Dataset:
    """Renames the dataset called ``name`` aside and gives ``dataset`` its name.

    Returns:
        The renamed old dataset, to delete (it keeps ``name`` if the rename fails).
    """
    old = fo.load_dataset(name)
    old.name = _temporary_name(name, "replaced")
    try:
        dataset.name = name
    except BaseException:
        old.name = name
        raise
    return old


def _import_files(
    dataset: fo.Dataset,
    dataset_dir: str,
    items: list[tuple[str, str | None, str | None]],
    label_field: str,
    mask_dir: str,
    num_workers: int | None,
    progress: bool | Callable | None,
) -> SA1BImportSummary:
    """Adds the samples of ``items`` to ``dataset`` and records the summary in its info.

    Raises:
        RuntimeError: no file could be imported.
    """
    summary = SA1BImportSummary(mask_dir=mask_dir)
    workers = max(1, fou.recommend_thread_pool_workers(num_workers))

    def read(item):
        return _read_image(item, dataset_dir, mask_dir, label_field)

    batch: list[fo.Sample] = []
    with fou.ProgressBar(total=len(items), progress=progress, iters_str="images") as pbar:
        for result in pbar(_ordered_map(read, items, workers)):
            if result.error is not None:
                summary.errors[result.key] = result.error
                continue
            summary.num_samples += 1
            if not result.has_json:
                summary.num_without_json += 1
            else:
                summary.num_annotations += len(result.sample[label_field].detections)
            batch.append(result.sample)
            if len(batch) >= _ADD_BATCH_SIZE:
                dataset.add_samples(batch, progress=False)
                batch = []
    if batch:
        dataset.add_samples(batch, progress=False)

    if summary.num_samples == 0:
        raise RuntimeError(
            f"No file of {dataset_dir!r} could be imported:\n" + _format_errors(summary.errors)
        )
    declare_detection_attributes(dataset, label_field)
    dataset.info["sa1b_import"] = summary.to_dict()
    dataset.save()
    return summary


def _check_label_field(label_field: Any) -> None:
    """Raises ValueError unless ``label_field`` can name a new top-level sample field."""
    check_field_name(label_field)
    reserved = {*fos.get_default_sample_fields(include_private=True), IMAGE_ID_FIELD}
    if label_field in reserved:
        raise ValueError(
            f"Expected `label_field` to be a new field, but got {label_field!r}, a field "
            "FiftyOne or the import itself writes"
        )


def _temporary_name(name: str, purpose: str) -> str:
    """An unused dataset name derived from ``name`` (``<name>-<purpose>-<random>``)."""
    while True:
        candidate = f"{name[:64]}-{purpose}-{uuid.uuid4().hex[:8]}"
        if not fo.dataset_exists(candidate):
            return candidate


def _discard(dataset: fo.Dataset) -> None:
    """Deletes a dataset whose import failed (logging, not raising, when that fails too)."""
    try:
        if not dataset.deleted:
            dataset.delete()
    except Exception:
        logger.warning("Could not delete the incomplete dataset %r", dataset.name, exc_info=True)


def declare_detection_attributes(dataset: fo.Dataset, label_field: str) -> None:
    """Declares the Detection attributes the App sidebar filters on.

    ``predicted_iou``, ``stability_score`` (float), ``area`` (int) and ``class_proposals``
    (list of str) are declared even before any sample has them. The bookkeeping attributes
    (``rle_counts``, ``sa1b_bbox``, ``point_coords``, ...) stay undeclared on purpose: long
    strings and nested lists make useless, expensive sidebar filters.

    Args:
        dataset: the dataset.
        label_field: a ``fo.Detections`` field of it (declared here if no sample has it yet).
    """
    schema = dataset.get_field_schema(flat=True)
    if label_field not in schema:
        dataset.add_sample_field(
            label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections
        )
    for attr, (ftype, subfield) in _FILTERABLE_ATTRIBUTES.items():
        path = f"{label_field}.detections.{attr}"
        if path not in schema:
            kwargs = {"subfield": subfield} if subfield is not None else {}
            dataset.add_sample_field(path, ftype, **kwargs)


def _pair_files(dataset_dir: str) -> list[tuple[str, str | None, str | None]]:
    """``(stem, image path, json path)`` per stem, sorted; either path may be None.

    When several images share a stem (``cat.jpg``, ``cat.png``), the first by name is paired
    with ``<stem>.json`` and each other one is an item of its own, without JSON (imported
    without masks rather than dropped).
    """
    images: dict[str, list[str]] = collections.defaultdict(list)
    jsons: dict[str, str] = {}
    for entry in sorted(os.scandir(dataset_dir), key=lambda e: e.name):
        if not entry.is_file():
            continue
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() == ".json":
            jsons[stem] = entry.path
        elif ext.lower() in IMAGE_EXTENSIONS:
            images[stem].append(entry.path)
    items: list[tuple[str, str | None, str | None]] = []
    for stem in sorted(set(images) | set(jsons)):
        paths = images.get(stem) or [None]
        items.append((stem, paths[0], jsons.get(stem)))
        items.extend((stem, path, None) for path in paths[1:])
    return items


def _ordered_map(fn: Callable, items: Iterable, num_workers: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of pending items."""
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending = collections.deque(
            pool.submit(fn, x) for x in itertools.islice(items, 2 * num_workers)
        )
        while pending:
            result = pending.popleft().result()
            for x in itertools.islice(items, 1):
                pending.append(pool.submit(fn, x))
            yield result


def _read_image(
    item: tuple[str, str | None, str | None], dataset_dir: str, mask_dir: str, label_field: str
) -> _ImageResult:
    """Reads one image and its JSON into a sample (never raises; errors are returned)."""
    stem, image_path, json_path = item
    key = os.path.basename(json_path or image_path)
    try:
        if json_path is None:
            width, height = _image_size(image_path)
            sample = fo.Sample(filepath=image_path, metadata=_metadata(image_path, width, height))
            return _ImageResult(key, sample, has_json=False)
        record = _load_json(json_path)
        image_path = image_path or _image_from_record(record, dataset_dir, stem)
        width, height = _image_size(image_path)
        image_id = _check_image_record(record, width, height, image_path)
        image_mask_dir = _mask_subdir(mask_dir, stem)
        detections = [
            _annotation_to_detection(ann, k, width, height, image_mask_dir, image_path)
            for k, ann in enumerate(record["annotations"])
        ]
        sample = fo.Sample(filepath=image_path, metadata=_metadata(image_path, width, height))
        sample[label_field] = fo.Detections(detections=detections)
        if image_id is not None:
            sample[IMAGE_ID_FIELD] = image_id
        return _ImageResult(key, sample)
    except SA1BFileError as err:
        return _ImageResult(key, error=str(err))
    except Exception as err:  # any unexpected failure is still one file's problem
        return _ImageResult(key, error=f"{type(err).__name__}: {err}")


def _mask_subdir(mask_dir: str, stem: str) -> str:
    """``<mask_dir>/<stem>``, refusing stems that would put masks elsewhere (``..``, ``.``)."""
    path = os.path.join(mask_dir, stem)
    if stem in ("", ".", "..") or os.path.dirname(os.path.normpath(path)) != os.path.normpath(
        mask_dir
    ):
        raise SA1BFileError(f"file name stem {stem!r} cannot name a mask directory")
    return path


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is allowed
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SA1BFileError(f"malformed JSON: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("annotations"), list):
        raise SA1BFileError("malformed SA-1B JSON: expected an object with an 'annotations' list")
    return record


def _image_from_record(record: dict, dataset_dir: str, stem: str) -> str:
    image = record.get("image") if isinstance(record.get("image"), dict) else {}
    file_name = image.get("file_name")
    if isinstance(file_name, str) and os.path.basename(file_name) == file_name:
        path = os.path.join(dataset_dir, file_name)
        if os.path.isfile(path):
            return path
    expected = file_name if isinstance(file_name, str) else f"{stem}.jpg"
    raise SA1BFileError(f"missing image: {expected!r} not found in {dataset_dir!r}")


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of the image as the pipeline reads it (EXIF orientation applied)."""
    try:
        height, width = read_size(path)
    except (OSError, ValueError) as err:
        raise SA1BFileError(f"unreadable image {os.path.basename(path)!r}: {err}") from err
    return width, height


def _metadata(path: str, width: int, height: int) -> fo.ImageMetadata:
    return fo.ImageMetadata(width=width, height=height, size_bytes=os.path.getsize(path))


def _check_image_record(record: dict, width: int, height: int, image_path: str) -> Any:
    """Validates the ``image`` record against the image file; returns its ``image_id``."""
    image = record.get("image")
    if image is None:
        return None
    if not isinstance(image, dict):
        raise SA1BFileError("malformed SA-1B JSON: 'image' is not an object")
    declared = (image.get("width", width), image.get("height", height))
    if declared != (width, height):
        raise SA1BFileError(
            f"image record says {declared[0]}x{declared[1]} (width x height), but the image "
            f"file is {width}x{height}{_rotation_hint(declared, width, height, image_path)}"
        )
    return image.get("image_id")


def _rotation_hint(declared: tuple, width: int, height: int, image_path: str) -> str:
    """A hint when a declared (width, height) is the size of an EXIF-rotated image's pixels."""
    if width == height or tuple(declared) != (height, width):
        return ""
    try:
        with Image.open(image_path) as image:
            if image.getexif().get(0x0112, 1) not in (5, 6, 7, 8):
                return ""
    except (OSError, SyntaxError):
        return ""
    return (
        " (turned by 90 degrees: the masks were made from the stored pixels, before the "
        "image's EXIF orientation was applied; the image is read upright, as the App shows it)"
    )


def _annotation_to_detection(
    ann: dict, index: int, width: int, height: int, mask_dir: str, image_path: str
) -> fo.Detection:
    """One SA-1B annotation as a Detection whose mask (cropped to its box) is a PNG on disk."""
    ann_id = ann.get("id", index) if isinstance(ann, dict) else index
    where = f"annotation {index} (id {ann_id})"
    if not isinstance(ann, dict) or not isinstance(ann.get("segmentation"), dict):
        raise SA1BFileError(f"{where}: no 'segmentation' RLE")
    seg = ann["segmentation"]
    size = list(seg.get("size", []))
    if size != [height, width]:
        raise SA1BFileError(
            f"{where}: RLE size {size} (height, width) disagrees with the image size "
            f"[{height}, {width}]{_rotation_hint(tuple(size[::-1]), width, height, image_path)}"
        )
    counts = seg.get("counts")
    try:
        if not isinstance(counts, str):  # uncompressed RLE: keep it as COCO's string form
            counts = compress_counts(counts)
        rle = {"size": size, "counts": counts}
        x0, y0, x1, y1 = _pixel_box(ann.get("bbox"), rle_to_bbox(rle), width, height)
        crop = rle_to_mask(rle, box=(x0, y0, x1, y1))
    except (ValueError, TypeError) as err:
        raise SA1BFileError(f"{where}: invalid RLE: {err}") from err

    det = fo.Detection(
        label=_optional_str(ann.get("class_name")),
        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
    )
    if x1 > x0 and y1 > y0:
        det.mask_path = _write_mask_png(crop, os.path.join(mask_dir, f"{index:05d}.png"))
    attrs = {
        "sa1b_id": ann.get("id"),
        "area": _area(ann.get("area"), rle, where),
        "predicted_iou": _optional_float(ann.get("predicted_iou")),
        "stability_score": _optional_float(ann.get("stability_score")),
        "point_coords": ann.get("point_coords"),
        "crop_box": ann.get("crop_box"),
        "sa1b_bbox": ann.get("bbox"),
        "rle_counts": counts,
        "class_proposals": _proposals(ann.get("class_proposals")),
    }
    for attr, value in attrs.items():
        if value is not None:
            det[attr] = value
    return det


def _pixel_box(bbox: Any, tight: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box ``(x0, y0, x1, y1)`` (end exclusive): the annotation's ``bbox`` grown to hold
    every mask pixel (its tight box, ``tight``) and clipped to the image."""
    boxes = []
    if isinstance(bbox, list | tuple) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
        x, y, w, h = (float(v) for v in bbox)
        boxes.append((math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)))
    if tight[2] > 0:
        x, y, w, h = (int(v) for v in tight)
        boxes.append((x, y, x + w, y + h))
    if not boxes:
        return 0, 0, 0, 0
    x0 = min(max(0, min(b[0] for b in boxes)), width)
    y0 = min(max(0, min(b[1] for b in boxes)), height)
    x1 = max(x0, min(width, max(b[2] for b in boxes)))
    y1 = max(y0, min(height, max(b[3] for b in boxes)))
    return x0, y0, x1, y1


def _write_mask_png(mask: np.ndarray, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=1)
    return path


def _area(value: Any, rle: dict, where: str) -> int:
    """The annotation's ``area``, or the RLE's pixel count where it is absent or null."""
    if value is None:
        return rle_area(rle)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SA1BFileError(f"{where}: expected a number for 'area', but got {value!r}")
    return int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _proposals(value: Any) -> list[str] | None:
    """``class_proposals`` as a list (the original close-set SSA wrote a bare string)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _format_errors(errors: dict[str, str]) -> str:
    return "\n".join(f"  {key}: {message}" for key, message in sorted(errors.items()))


def _log_summary(summary: SA1BImportSummary, label_field: str) -> None:
    logger.info(
        "Imported %d images with %d masks into field %r (mask PNGs under %s)",
        summary.num_samples,
        summary.num_annotations,
        label_field,
        summary.mask_dir,
    )
    if summary.num_without_json:
        logger.warning(
            "%d image(s) had no SA-1B JSON and were imported without masks",
            summary.num_without_json,
        )
    if summary.errors:
        logger.warning(
            "%d file(s) could not be imported:\n%s",
            len(summary.errors),
            _format_errors(summary.errors),
        )
