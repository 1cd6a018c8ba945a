"""Colours in the FiftyOne App: each class of a run's output fields in a colour of its own.

Without a colour scheme the App draws a Segmentation in one colour (colour by field) and fills
every mask of a Detections field with that field's colour, so classes cannot be told apart. A
labelling run that writes fields (SSA and SSA-engine alike, see ``run_loop``) therefore adds,
to the dataset's App colour scheme (``dataset.app_config.color_scheme``):

- for each Segmentation output, a colour per class id of its mask targets
  (``maskTargetsColors``; id 0 is FiftyOne's background, never drawn);
- for each Detections output, a colour per label (``colorByAttribute: "label"`` and
  ``valueColors``), the colour of the same class in the Segmentation fields of the run;
- colour by value (``color_by="value"``: the App applies per-class colours only then) and an
  opacity of :data:`DEFAULT_OPACITY`, each only where the scheme has no setting of its own.

The scheme is merged, never replaced: other fields' settings, and every colour already set for
an output field's class (by the user in the App, or by an earlier run), are kept.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import fiftyone as fo

__all__ = ["DEFAULT_OPACITY", "class_color", "output_color_scheme", "set_output_colors"]

# Masks at the App's default (0.7) hide the image under a map and a mask layer drawn together.
DEFAULT_OPACITY = 0.5
_GOLDEN_RATIO = 0.6180339887498949


def class_color(class_id: int) -> str:
    """The ``#rrggbb`` colour of a class id: hues a golden-ratio turn apart, so that any two
    nearby ids differ clearly and no two ids share a colour.

    Raises:
        ValueError: ``class_id`` is not a non-negative integer.
    """
    if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 0:
        raise ValueError(f"Expected a non-negative integer class id, but got {class_id!r}")
    hue = (class_id * _GOLDEN_RATIO) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (red, green, blue)))


def output_color_scheme(
    scheme: fo.ColorScheme | None,
    segmentations: Mapping[str, Mapping[int, str]],
    detections: Mapping[str, list[str]],
) -> fo.ColorScheme:
    """``scheme`` (None: a new one) with per-class colours for the given output fields.

    Args:
        scheme: the dataset's colour scheme, left unchanged (a copy is returned).
        segmentations: Segmentation field -> its mask targets (class id -> name).
        detections: Detections field -> its labels.

    Returns:
        The merged scheme: see the module's description.
    """
    merged = scheme.copy() if scheme is not None else fo.ColorScheme()
    if merged.color_by is None:
        merged.color_by = "value"
    if merged.opacity is None:
        merged.opacity = DEFAULT_OPACITY
    entries = [dict(entry) for entry in merged.fields or []]
    by_path = {entry.get("path"): entry for entry in entries}

    def entry_of(path: str) -> dict:
        if path not in by_path:
            by_path[path] = {"path": path}
            entries.append(by_path[path])
        return by_path[path]

    ids: dict[str, int] = {}  # class name -> id, across the Segmentation fields
    for targets in segmentations.values():
        for class_id, name in sorted(targets.items()):
            ids.setdefault(str(name), int(class_id))
    for path, targets in segmentations.items():
        entry = entry_of(path)
        colors = list(entry.get("maskTargetsColors") or [])
        taken = {c.get("intTarget") for c in colors}
        colors += [
            {"intTarget": int(i), "color": class_color(int(i))}
            for i in sorted(targets)
            if int(i) != 0 and int(i) not in taken
        ]
        entry["maskTargetsColors"] = colors
    next_id = max(ids.values(), default=0) + 1
    for path, labels in detections.items():
        entry = entry_of(path)
        if not entry.get("colorByAttribute"):
            entry["colorByAttribute"] = "label"
        colors = list(entry.get("valueColors") or [])
        taken = {c.get("value") for c in colors}
        for name in sorted({str(label) for label in labels}):
            if name not in ids:
                ids[name], next_id = next_id, next_id + 1
            if name not in taken:
                colors.append({"value": name, "color": class_color(ids[name])})
        entry["valueColors"] = colors
    merged.fields = entries
    return merged


def set_output_colors(dataset: fo.Dataset, fields: Mapping[str, type]) -> None:
    """Merges per-class colours for a run's output fields into the dataset's colour scheme.

    Called once the run's mask targets are final. A Detections field's classes are the names
    of the run's Segmentation fields when it has some (SSA's ``ssa``, SSA-engine's ``_seg``),
    else the labels the field holds.

    Args:
        dataset: the dataset.
        fields: output field -> label class (``fo.Segmentation`` or ``fo.Detections``; other
            entries are ignored).
    """
    segmentations = {
        path: {int(k): str(v) for k, v in (dataset.mask_targets.get(path) or {}).items()}
        for path, kind in fields.items()
        if kind is fo.Segmentation
    }
    names = sorted({n for targets in segmentations.values() for n in targets.values()})
    detections = {
        path: names or dataset.distinct(f"{path}.detections.label")
        for path, kind in fields.items()
        if kind is fo.Detections
    }
    scheme = output_color_scheme(dataset.app_config.color_scheme, segmentations, detections)
    dataset.app_config.color_scheme = scheme
    dataset.save()
