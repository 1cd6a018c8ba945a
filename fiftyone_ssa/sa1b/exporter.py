"""SA-1B export: FiftyOne labels -> one ``<image stem>.json`` per sample in SA-1B's schema.

Each annotation carries ``class_name`` (the detection's label) and ``class_proposals``. A mask is
written back with its stored ``counts``, ``bbox`` and ``area`` exactly when its current pixels
equal the stored RLE's; edited masks (pixels or box) are re-encoded. A ``fo.Segmentation``
field exports as the original SSA's close-set files instead (:func:`export_semantic_rles`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import numpy as np
import torch

from fiftyone_ssa.core.images import read_size
from fiftyone_ssa.core.rle import (
    compress_counts,
    decompress_counts,
    encode_counts,
    masks_to_rles,
    rle_area,
    rle_to_bbox,
)
from fiftyone_ssa.labels import detection_full_mask
from fiftyone_ssa.sa1b.importer import IMAGE_ID_FIELD

logger = logging.getLogger(__name__)

_CLASSES_PER_CHUNK = 16  # class masks encoded at once by the semantic export


def export_sa1b(
    samples: fo.core.collections.SampleCollection,
    export_dir: str,
    label_field: str,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    masks_field: str | None = None,
) -> list[str]:
    """Writes one SA-1B JSON per sample, ``<export_dir>/<image stem>.json``.

    Each ``fo.Detection`` of ``label_field`` becomes an annotation (``id``, ``segmentation``
    with a string ``counts``, ``area``, ``bbox``, ``predicted_iou``, ``point_coords``,
    ``crop_box``, ``stability_score``, ``class_name`` = the label or ``""``,
    ``class_proposals`` = the attribute or ``[]``). A mask whose pixels equal its stored
    ``rle_counts`` is written with the stored ``counts``, ``bbox`` and ``area`` (byte-exact);
    otherwise it is re-encoded. Missing scores are written as null, a missing ``crop_box`` as
    the whole image and missing ``point_coords`` as ``[]``; a detection without a mask counts
    as its filled box.

    When ``label_field`` is a ``fo.Segmentation``, this writes the close-set SSA files instead
    (see :func:`export_semantic_rles`; ``masks_field`` is passed on).

    Args:
        samples: the samples to export.
        export_dir: output directory (created if needed).
        label_field: a ``fo.Detections`` (or ``fo.Segmentation``) field.
        overwrite: replace JSON files that already exist.
        progress: show a progress bar (None: FiftyOne's default), or a progress callback.
        masks_field: only for a Segmentation field, see :func:`export_semantic_rles`.

    Returns:
        The paths written, one per sample. A sample whose file cannot be made (e.g. its image
        size can be read neither from the file nor from its metadata) is skipped with a
        warning naming it, plus a summary warning with their count.

    Raises:
        ValueError: the field is missing or of another type, an image stem would escape
            ``export_dir`` or is shared by two samples, or a file exists and ``overwrite`` is
            False (all checked before anything is written).
        RuntimeError: every sample failed (the message names the first failure).
    """
    label_type = _label_type(samples, label_field)
    if label_type is fo.Segmentation:
        return export_semantic_rles(
            samples, export_dir, label_field, masks_field, overwrite=overwrite, progress=progress
        )
    if label_type is not fo.Detections:
        raise ValueError(
            f"Expected `label_field` to be a Detections or Segmentation field, but "
            f"{label_field!r} holds {label_type.__name__}"
        )

    def record(sample: fo.Sample, stem: str, index: int) -> dict:
        width, height = _sample_size(sample)
        return {
            "image": _image_record(sample, stem, index, width, height),
            "annotations": _annotations(sample[label_field], width, height),
        }

    return _export(samples, export_dir, [label_field], ".json", overwrite, progress, record)


def export_semantic_rles(
    samples: fo.core.collections.SampleCollection,
    export_dir: str,
    label_field: str,
    masks_field: str | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
) -> list[str]:
    """Writes the close-set SSA output as the original did: ``<image stem>_semantic.json``.

    Each file holds ``image`` (image_id, width, height, file_name), ``semantic_mask`` mapping
    every class id present in the Segmentation (as a string) to the RLE of its pixels,
    ``id2label`` mapping those ids to class names (from ``mask_targets``, else the id), and
    ``annotations``: the SA-1B annotations of ``masks_field`` (e.g. ``ssa_masks``), or ``[]``.

    Args:
        samples: the samples to export.
        export_dir: output directory (created if needed).
        label_field: a ``fo.Segmentation`` field with integer class ids.
        masks_field: optional ``fo.Detections`` field exported as ``annotations``.
        overwrite: replace files that already exist.
        progress: show a progress bar (None: FiftyOne's default), or a progress callback.

    Returns:
        The paths written, one per sample that has a ``label_field`` label (samples without
        one are skipped with a warning, and so are samples whose file cannot be made, e.g. an
        unreadable mask, each named in a warning, plus a summary warning with their count).

    Raises:
        ValueError: a field is missing or of another type, an image stem would escape
            ``export_dir`` or is shared by two samples, or a file exists and ``overwrite`` is
            False (all checked before anything is written).
        RuntimeError: every sample with a label failed (the message names the first failure).
    """
    if _label_type(samples, label_field) is not fo.Segmentation:
        raise ValueError(
            f"Expected `label_field` to be a Segmentation field, but got {label_field!r}"
        )
    fields = [label_field]
    if masks_field is not None:
        if _label_type(samples, masks_field) is not fo.Detections:
            raise ValueError(
                f"Expected `masks_field` to be a Detections field, but got {masks_field!r}"
            )
        fields.append(masks_field)
    targets = samples.mask_targets.get(label_field) or samples.default_mask_targets or {}

    def record(sample: fo.Sample, stem: str, index: int) -> dict | None:
        seg = sample[label_field]
        if seg is None:
            return None
        class_map = seg.get_mask()
        if class_map is None or np.asarray(class_map).ndim != 2:
            raise ValueError(f"Expected {stem!r} to have a 2-D integer mask in {label_field!r}")
        class_map = torch.from_numpy(np.asarray(class_map).astype(np.int64))
        height, width = class_map.shape
        out = {"image": _image_record(sample, stem, index, width, height)}
        dets = sample[masks_field] if masks_field is not None else None
        out["annotations"] = _annotations(dets, width, height)
        ids = torch.unique(class_map)
        rles = [
            rle
            for chunk in ids.split(_CLASSES_PER_CHUNK)
            for rle in masks_to_rles(class_map[None] == chunk[:, None, None])
        ]
        out["semantic_mask"] = {str(int(i)): rle for i, rle in zip(ids, rles)}
        out["id2label"] = {str(int(i)): str(targets.get(int(i), int(i))) for i in ids}
        return out

    return _export(samples, export_dir, fields, "_semantic.json", overwrite, progress, record)


def _label_type(samples: fo.core.collections.SampleCollection, label_field: str) -> type:
    field_ = samples.get_field(label_field)
    if field_ is None:
        raise ValueError(
            f"Expected `label_field` to be a field of the samples, but got {label_field!r}"
        )
    return getattr(field_, "document_type", None) or type(field_)


def _export(
    samples: fo.core.collections.SampleCollection,
    export_dir: str,
    fields: list[str],
    suffix: str,
    overwrite: bool,
    progress: bool | Callable | None,
    make_record: Callable[[fo.Sample, str, int], dict | None],
) -> list[str]:
    """Checks every output path first, then writes one JSON per sample (none where
    ``make_record`` returns None).

    A sample whose record cannot be made (``make_record`` raises ValueError or OSError, e.g.
    an unreadable image size) is skipped with a warning naming it; a summary warning counts
    them at the end.

    Returns:
        The paths written.

    Raises:
        ValueError: two samples share an image stem, a stem would escape ``export_dir``, or a
            file exists and ``overwrite`` is False (checked before anything is written).
        RuntimeError: samples failed and none was written (names the first failure).
    """
    export_dir = os.path.realpath(export_dir)
    paths = [_output_path(export_dir, fp, suffix) for fp in samples.values("filepath")]
    seen: dict[str, int] = collections.Counter(paths)
    duplicates = sorted(os.path.basename(p) for p, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"Expected unique image stems, but several samples map to {duplicates[:5]}"
        )
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(
            f"{len(existing)} file(s) already exist in {export_dir!r} (e.g. "
            f"{os.path.basename(existing[0])!r}); pass overwrite=True to replace them"
        )
    os.makedirs(export_dir, exist_ok=True)
    extra = [IMAGE_ID_FIELD] if samples.has_field(IMAGE_ID_FIELD) else []
    view = samples.select_fields(fields + extra)
    written = []
    failed: dict[str, str] = {}  # image file name -> why its record could not be made
    removed = 0
    for index, (sample, path) in enumerate(
        zip(view.iter_samples(progress=progress), paths, strict=True)
    ):
        stem = os.path.basename(path)[: -len(suffix)]
        try:
            record = make_record(sample, stem, index)
        except (ValueError, OSError) as err:
            key = os.path.basename(sample.filepath)
            failed[key] = f"{type(err).__name__}: {err}" if isinstance(err, OSError) else str(err)
            logger.warning("Skipped %s: %s", key, failed[key])
            record = None
        if record is None:
            if os.path.exists(path):  # an earlier export's (overwrite): not these labels
                os.remove(path)
                removed += 1
            continue
        text = json.dumps(record)  # serialized first: no half-written file on a TypeError
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    if removed:
        logger.warning("Removed %d earlier file(s) of samples not exported this time", removed)
    unlabelled = len(paths) - len(written) - len(failed)
    if unlabelled:
        logger.warning("%d sample(s) have no %r label and were not exported", unlabelled, fields[0])
    if failed:
        first = next(iter(failed.items()))
        if not written:
            raise RuntimeError(
                f"No sample could be exported to {export_dir!r} ({len(failed)} failed); "
                f"the first, {first[0]}: {first[1]}"
            )
        logger.warning(
            "%d sample(s) could not be exported and were skipped (wrote %d file(s)): %s",
            len(failed),
            len(written),
            ", ".join(sorted(failed)[:10]) + (", ..." if len(failed) > 10 else ""),
        )
    return written


def _output_path(export_dir: str, filepath: str, suffix: str) -> str:
    """``<export_dir>/<stem><suffix>``, refusing stems that would leave ``export_dir``."""
    stem = os.path.splitext(os.path.basename(filepath))[0]
    path = os.path.realpath(os.path.join(export_dir, stem + suffix))
    if not stem or stem in (".", "..") or os.path.dirname(path) != export_dir:
        raise ValueError(
            f"Expected image stems that name a file inside `export_dir`, but {filepath!r} "
            f"would write {path!r}"
        )
    return path


def _sample_size(sample: fo.Sample) -> tuple[int, int]:
    """(width, height) of the image as the pipeline labelled it (EXIF orientation applied),
    else from the metadata when the file cannot be read.

    Raises:
        ValueError: neither the file nor the metadata gives the size (names the file).
    """
    try:
        height, width = read_size(sample.filepath)
        return width, height
    except (OSError, ValueError) as err:
        md = sample.metadata
        if md is not None and md.width and md.height:
            return int(md.width), int(md.height)
        raise ValueError(f"cannot read the size of {sample.filepath!r}: {err}") from None


def _image_record(sample: fo.Sample, stem: str, index: int, width: int, height: int) -> dict:
    image_id = sample[IMAGE_ID_FIELD] if sample.has_field(IMAGE_ID_FIELD) else None
    if image_id is None:
        match = re.fullmatch(r"sa_(\d+)", stem)
        image_id = int(match.group(1)) if match else index + 1
    return {
        "image_id": image_id,
        "width": width,
        "height": height,
        "file_name": os.path.basename(sample.filepath),
    }


def _annotations(dets: fo.Detections | None, width: int, height: int) -> list[dict]:
    detections = dets.detections if dets is not None else []
    known = [d.get_field("sa1b_id") for d in detections if d.has_field("sa1b_id")]
    next_id = max([int(i) for i in known if isinstance(i, int)], default=0) + 1
    out = []
    for det in detections:
        ann_id = det.get_field("sa1b_id") if det.has_field("sa1b_id") else None
        if ann_id is None:
            ann_id, next_id = next_id, next_id + 1
        out.append(_detection_to_annotation(det, ann_id, width, height))
    return out


def _attr(det: fo.Detection, name: str) -> Any:
    return det.get_field(name) if det.has_field(name) else None


def _detection_to_annotation(det: fo.Detection, ann_id: Any, width: int, height: int) -> dict:
    """One Detection as an SA-1B annotation; stored RLE fields reused when the mask is unchanged."""
    runs = encode_counts(detection_full_mask(det, width, height))
    stored = _attr(det, "rle_counts")
    unchanged = False
    if isinstance(stored, str):
        try:
            unchanged = np.array_equal(decompress_counts(stored), runs)
        except ValueError:
            unchanged = False
    if unchanged:
        counts = stored
        rle = {"size": [height, width], "counts": counts}
        bbox = _attr(det, "sa1b_bbox")
        bbox = bbox if bbox is not None else rle_to_bbox(rle)
        area = _attr(det, "area")
        area = area if area is not None else rle_area(rle)
    else:
        counts = compress_counts(runs)
        rle = {"size": [height, width], "counts": counts}
        bbox, area = rle_to_bbox(rle), rle_area(rle)
    crop_box = _attr(det, "crop_box")
    point_coords = _attr(det, "point_coords")
    proposals = _attr(det, "class_proposals")
    return {
        "id": ann_id,
        "segmentation": {"size": [height, width], "counts": counts},
        "area": area,
        "bbox": bbox,
        "predicted_iou": _attr(det, "predicted_iou"),
        "point_coords": point_coords if point_coords is not None else [],
        "crop_box": crop_box if crop_box is not None else [0, 0, width, height],
        "stability_score": _attr(det, "stability_score"),
        "class_name": det.label if det.label is not None else "",
        "class_proposals": list(proposals) if proposals is not None else [],
    }
